"""Measuring tools: training speed of the fast and reference paths (``train_speed``, ``fastdecoder bench train``),
K members against K separate runs (``members_speed``), and the host-read guard of the no-sync step
(``host_reads``). Nothing in training imports them."""
