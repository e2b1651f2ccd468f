"""The phoneme inventory shared by both reference datasets.

Class 0 is the CTC blank, 1..39 the ARPAbet phonemes without stress, 40 SIL (word boundary, also once at sentence
end): 41 classes in all.
"""

PHONEMES = (
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH", "IY", "JH",
    "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH",
)
SIL = 40
N_CLASSES = 41
#: class index -> symbol ("<b>" for blank, "|" for SIL)
SYMBOLS = ("<b>",) + PHONEMES + ("|",)
PHONEME_TO_ID = {p: i + 1 for i, p in enumerate(PHONEMES)}
PHONEME_TO_ID["SIL"] = SIL

assert len(SYMBOLS) == N_CLASSES


def ids_to_text(ids) -> str:
    """Phoneme ids -> space-separated symbols ("HH AH L OW | ...")."""
    return " ".join(SYMBOLS[int(i)] for i in ids)
