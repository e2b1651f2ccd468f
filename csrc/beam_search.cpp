// Exact CTC prefix beam search (see beam_search.hpp for the definition and the pruning argument).
#include "beam_search.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>

#include "log_math.hpp"
#include "thread_pool.hpp"

namespace fastdecoder {

namespace {

// The k-th largest (0-based) of a[0..m): quickselect with branch-free partitions (random scores make the
// comparisons of std::nth_element mispredict half the time). Uses buf (2m doubles); a is clobbered.
double kth_largest(double* a, size_t m, size_t k, double* buf) {
  while (m > 16) {
    double x = a[0], y = a[m / 2], z = a[m - 1];  // median of three as pivot
    if (x > y) std::swap(x, y);
    const double p = std::max(x, std::min(y, z));
    double* gt = buf;
    double* lt = buf + m;
    size_t ngt = 0, nlt = 0;
    for (size_t i = 0; i < m; ++i) {
      const double v = a[i];
      gt[ngt] = v;
      lt[nlt] = v;
      ngt += v > p;
      nlt += v < p;
    }
    if (k < ngt) {
      std::copy(gt, gt + ngt, a);
      m = ngt;
    } else if (k < m - nlt) {
      return p;
    } else {
      k -= m - nlt;
      std::copy(lt, lt + nlt, a);
      m = nlt;
    }
  }
  std::sort(a, a + m, std::greater<double>());
  return a[k];
}

}  // namespace

int32_t PrefixBeamSearch::child(int32_t parent, int32_t token, int32_t frame) {
  for (int32_t c = nodes_[parent].first_child; c >= 0; c = nodes_[c].next_sibling)
    if (nodes_[c].token == token) return c;
  if (nodes_.size() >= static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    throw std::length_error("beam search: more than 2^31 prefixes in one sentence (lower beam_width or split it)");
  const int32_t id = static_cast<int32_t>(nodes_.size());
  const Node& p = nodes_[parent];
  const Node& j = nodes_[p.jump];
  const int32_t jump = p.depth - j.depth == j.depth - nodes_[j.jump].depth ? j.jump : parent;
  nodes_.push_back(Node{parent, token, p.depth + 1, -1, p.first_child, frame, -1, -1, jump});
  nodes_[parent].first_child = id;
  return id;
}

int32_t PrefixBeamSearch::ancestor_at(int32_t n, int32_t depth) const {
  while (nodes_[n].depth > depth) {
    const int32_t j = nodes_[n].jump;
    n = nodes_[j].depth >= depth ? j : nodes_[n].parent;
  }
  return n;
}

int PrefixBeamSearch::compare_tokens(int32_t pa, int32_t ta, int32_t pb, int32_t tb) const {
  if (pa < 0 || pb < 0) return (pa >= 0) - (pb >= 0);  // the empty prefix (root candidate) ranks first
  if (pa == pb) return (ta > tb) - (ta < tb);
  // A = seq(a) + [ua, ...], B = seq(b) + [ub, ...]; lift the deeper side to the other's depth.
  int32_t a = pa, b = pb, ua = ta, ub = tb;
  const int32_t da = nodes_[pa].depth, db = nodes_[pb].depth;
  if (da > db) {
    a = ancestor_at(pa, db + 1);
    ua = nodes_[a].token, a = nodes_[a].parent;
  } else if (db > da) {
    b = ancestor_at(pb, da + 1);
    ub = nodes_[b].token, b = nodes_[b].parent;
  }
  if (a == b) {  // one sequence starts with seq(a) + [u]: a shared next token means the shorter one is a prefix
    if (ua != ub) return (ua > ub) - (ua < ub);
    return (da > db) - (da < db);
  }
  // Same depth, different nodes: climb to the two children of the common ancestor (equal depths keep equal jumps).
  while (nodes_[a].parent != nodes_[b].parent) {
    if (nodes_[a].jump != nodes_[b].jump)
      a = nodes_[a].jump, b = nodes_[b].jump;
    else
      a = nodes_[a].parent, b = nodes_[b].parent;
  }
  ua = nodes_[a].token, ub = nodes_[b].token;
  return (ua > ub) - (ua < ub);  // tokens of two distinct children of the common ancestor
}

PrefixBeamSearch::Cand PrefixBeamSearch::keep_best(int k) {
  // k-th best score by a selection on plain doubles, then one pass keeps the better ones in place.
  const size_t m = cands_.size();
  scores_.resize(3 * m);
  for (size_t i = 0; i < m; ++i) scores_[i] = cands_[i].score;
  const double thr = kth_largest(scores_.data(), m, static_cast<size_t>(k - 1), scores_.data() + m);
  // Keep score > thr (branch-free copy into the spare buffer), then fill up with exact ties at thr, which are
  // ordered by token sequence (there is at least one: the k-th best itself).
  spare_.resize(m);
  size_t kept = 0;
  for (size_t i = 0; i < m; ++i) {
    spare_[kept] = cands_[i];
    kept += cands_[i].score > thr;
  }
  ties_.clear();
  for (size_t i = 0; i < m; ++i)
    if (cands_[i].score == thr) ties_.push_back(cands_[i]);
  const size_t need = static_cast<size_t>(k) - kept;
  auto ranks_before = [this](const Cand& a, const Cand& b) { return before(a, b); };
  if (ties_.size() > need) std::nth_element(ties_.begin(), ties_.begin() + (need - 1), ties_.end(), ranks_before);
  Cand kth = ties_[0];
  for (size_t i = 0; i < need; ++i) {
    spare_[kept++] = ties_[i];
    if (before(kth, ties_[i])) kth = ties_[i];
  }
  spare_.resize(kept);
  cands_.swap(spare_);
  return kth;
}

void PrefixBeamSearch::begin(const BeamOptions& opt, int64_t vocab, int64_t frames_hint) {
  opt_ = opt;
  vocab_ = vocab;
  t_ = 0;
  nodes_.clear();
  nodes_.reserve(static_cast<size_t>(std::min<int64_t>(frames_hint * opt.beam_width + 1, int64_t{1} << 20)));
  nodes_.push_back(Node{-1, -1, 0, -1, -1, -1, -1, -1, 0});  // node 0: the empty prefix (its own jump)
  beam_.assign(1, Entry{0, -1, 0.0, kNegInf, 0.0});
  best_ = 0.0;
  row_.resize(static_cast<size_t>(vocab));
  std::fill(child_mask_.begin(), child_mask_.end(), 0);
}

template <typename T>
void PrefixBeamSearch::advance(const T* lp_in, int64_t frames, int64_t row_stride, int64_t col_stride) {
  for (int64_t t = 0; t < frames; ++t, ++t_) {
    const T* src = lp_in + t * row_stride;
    for (int64_t v = 0; v < vocab_; ++v) row_[v] = static_cast<double>(src[v * col_stride]);
    step(row_.data());
  }
}

void PrefixBeamSearch::step(const double* lp) {
  const int k = opt_.beam_width;
  const int32_t blank = opt_.blank;
  const int64_t vocab = vocab_;
  const int64_t words = (vocab + 63) / 64;
  const double cut = opt_.token_min_logprob;
  // Candidates are appended to cands_ while they can still make the beam; whenever cands_ reaches `cap`, it is cut
  // back to its k best (keep_best), which raises the k-th best `kth` and with it the threshold thr = kth.score.
  auto ranks_before = [this](const Cand& a, const Cand& b) { return before(a, b); };
  const size_t cap = static_cast<size_t>(std::max(2 * k, k + 32));

  const double lp_blank = lp[blank];
  const int n = static_cast<int>(beam_.size());
  const int32_t stamp = static_cast<int32_t>(t_);

  // 1. Beam prefixes stay (blank; repeat collapses) and take the extension from a parent in the beam:
  //    pb' = score + lp[blank], pnb' = lse(pnb + lp[c], ext from parent). Their scores are then final.
  cands_.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const Entry& e = beam_[i];
    Node& nd = nodes_[e.node];
    nd.stamp = stamp;
    nd.slot = i;
    Cand& c = cands_[i];  // fields written one by one: a struct temporary copied in stalls store forwarding
    c.pb = e.score + lp_blank;
    c.pnb = e.last >= 0 ? e.pnb + lp[e.last] : kNegInf;
    c.node = e.node;
    c.parent = nd.parent;
    c.token = nd.token;
  }
  // child_mask_ row j: the labels s with y_j+s in the beam (all bits are cleared again at the end of the frame).
  if (child_mask_.size() < static_cast<size_t>(n * words)) child_mask_.resize(static_cast<size_t>(n * words), 0);
  for (int i = 0; i < n; ++i) {
    const int32_t parent = cands_[i].parent;
    if (parent < 0 || nodes_[parent].stamp != stamp) continue;
    const int j = nodes_[parent].slot;
    const Entry& p = beam_[j];
    const int32_t s = beam_[i].last;
    cands_[i].pnb = lse(cands_[i].pnb, (s == p.last ? p.pb : p.score) + lp[s]);
    child_mask_[j * words + s / 64] |= uint64_t{1} << (s % 64);
  }
  for (auto& c : cands_) c.score = lse(c.pb, c.pnb);
  // A prefix of zero mass (-inf inputs) is no candidate.
  cands_.erase(std::remove_if(cands_.begin(), cands_.end(), [](const Cand& c) { return c.score == kNegInf; }),
               cands_.end());
  bool full = static_cast<int>(cands_.size()) >= k;
  Cand kth{};
  double thr = kNegInf;
  if (full) {
    kth = *std::max_element(cands_.begin(), cands_.end(), ranks_before);
    thr = kth.score;
  }

  // 2. New prefixes y+s (one parent each, so the score is final when proposed), labels by descending lp.
  //    score(y) + lp[s] bounds the new score: once below the k-th best, no later label of y can enter.
  labels_.clear();
  const double best = best_;  // the best beam score
  // No label below lp_floor can reach thr from the best prefix (the margin covers the rounding of thr - best).
  const double margin = 1e-9 + 1e-15 * (std::fabs(thr) + std::fabs(best));
  const double lp_floor = std::max(cut, thr - best - margin);
  for (int32_t s = 0; s < vocab; ++s)
    if (s != blank && lp[s] >= lp_floor) labels_.emplace_back(lp[s], s);
  std::sort(labels_.begin(), labels_.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);  // ties: smaller token first
  });
  if (!labels_.empty()) {
    const double top_lp = labels_.front().first;
    for (int i = 0; i < n; ++i) {
      const Entry& e = beam_[i];
      if (full && e.score + top_lp < thr) continue;
      const uint64_t* mask = child_mask_.data() + i * words;
      for (const auto& [l, s] : labels_) {
        const double bound = e.score + l;
        if (full && bound < thr) break;
        if (mask[s / 64] >> (s % 64) & 1) continue;  // y+s is in the beam: scored in step 1
        const double sc = (s == e.last ? e.pb : e.score) + l;
        if (sc == kNegInf || (full && sc < thr)) continue;
        if (full && sc == thr && compare_tokens(e.node, s, kth.parent, kth.token) > 0) {  // loses an exact tie
          if (bound == thr) break;  // later labels tie at best, with larger tokens
          continue;
        }
        Cand& c = cands_.emplace_back();
        c.score = sc;
        c.pb = kNegInf;
        c.pnb = sc;
        c.node = -1;
        c.parent = e.node;
        c.token = s;
        if (!full && static_cast<int>(cands_.size()) == k) {
          kth = *std::max_element(cands_.begin(), cands_.end(), ranks_before);
          thr = kth.score;
          full = true;
        } else if (cands_.size() >= cap) {
          kth = keep_best(k);
          thr = kth.score;
        }
      }
    }
  }

  for (int i = 0; i < n; ++i) {  // clear the child_mask_ bits set in step 1
    const int32_t parent = nodes_[beam_[i].node].parent;
    if (parent >= 0 && nodes_[parent].stamp == stamp)
      child_mask_[nodes_[parent].slot * words + beam_[i].last / 64] = 0;
  }

  // 3. The k best form the next beam (in no particular order; the final beam is sorted at the end).
  if (static_cast<int>(cands_.size()) > k) keep_best(k);
  next_beam_.clear();
  best_ = kNegInf;
  for (const Cand& c : cands_) {
    const int32_t node = c.node >= 0 ? c.node : child(c.parent, c.token, static_cast<int32_t>(t_));
    Entry& e = next_beam_.emplace_back();
    e.node = node;
    e.last = nodes_[node].token;
    e.pb = c.pb;
    e.pnb = c.pnb;
    e.score = c.score;
    best_ = std::max(best_, c.score);
  }
  beam_.swap(next_beam_);
}

std::vector<int32_t> PrefixBeamSearch::tokens_of(int32_t node) const {
  std::vector<int32_t> out(static_cast<size_t>(nodes_[node].depth));
  for (int32_t nd = node; nd > 0; nd = nodes_[nd].parent) out[nodes_[nd].depth - 1] = nodes_[nd].token;
  return out;
}

std::vector<Hypothesis> PrefixBeamSearch::hypotheses(int nbest) const {
  // Final ranking: score descending, then tokens.
  std::vector<const Entry*> order;
  order.reserve(beam_.size());
  for (const Entry& e : beam_) order.push_back(&e);
  const size_t m = std::min(static_cast<size_t>(std::max(nbest, 0)), order.size());
  auto by_rank = [this](const Entry* a, const Entry* b) { return entry_before(*a, *b); };
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(m), order.end(), by_rank);
  std::vector<Hypothesis> out(m);
  for (size_t i = 0; i < m; ++i) {
    Hypothesis& h = out[i];
    h.log_score = order[i]->score;
    h.tokens = tokens_of(order[i]->node);
    if (opt_.frames) {
      h.frames.resize(h.tokens.size());
      for (int32_t nd = order[i]->node; nd > 0; nd = nodes_[nd].parent)
        h.frames[nodes_[nd].depth - 1] = nodes_[nd].frame;
    }
  }
  return out;
}

Partial PrefixBeamSearch::partial() const {
  Partial p;
  const Entry* best = &beam_[0];
  int32_t common = beam_[0].node;  // deepest common ancestor of all beam prefixes = their longest common prefix
  for (const Entry& e : beam_) {
    if (entry_before(e, *best)) best = &e;
    int32_t a = common, b = e.node;
    while (nodes_[a].depth > nodes_[b].depth) a = nodes_[a].parent;
    while (nodes_[b].depth > nodes_[a].depth) b = nodes_[b].parent;
    while (a != b) a = nodes_[a].parent, b = nodes_[b].parent;
    common = a;
  }
  p.tokens = tokens_of(best->node);
  p.stable = nodes_[common].depth;
  p.log_score = best->score;
  return p;
}

template <typename T>
std::vector<Hypothesis> PrefixBeamSearch::decode(const T* lp_in, int64_t frames, int64_t vocab, int64_t row_stride,
                                                 int64_t col_stride, const BeamOptions& opt) {
  begin(opt, vocab, frames);
  advance(lp_in, frames, row_stride, col_stride);
  return hypotheses(opt.nbest);
}

template <typename T>
std::vector<std::vector<Hypothesis>> beam_search_batch(const T* log_probs, int64_t batch, int64_t frames,
                                                       int64_t vocab, int64_t batch_stride, int64_t row_stride,
                                                       int64_t col_stride, const int64_t* lengths,
                                                       const BeamOptions& opt, int num_threads) {
  (void)frames;
  std::vector<std::vector<Hypothesis>> out(static_cast<size_t>(batch));
  std::vector<int64_t> bad(static_cast<size_t>(2 * batch), -1);  // (t, v) of a non-finite value per sentence
  const int workers = resolve_num_threads(num_threads, batch);
  std::vector<PrefixBeamSearch> searchers(static_cast<size_t>(workers));
  parallel_for(batch, workers, [&](int64_t b, int w) {
    const T* x = log_probs + b * batch_stride;
    if (find_invalid_log_prob(x, lengths[b], vocab, row_stride, col_stride, &bad[2 * b], &bad[2 * b + 1])) return;
    out[b] = searchers[w].decode(x, lengths[b], vocab, row_stride, col_stride, opt);
  });
  throw_first_invalid_log_prob(log_probs, batch, batch_stride, row_stride, col_stride, bad.data());
  return out;
}

#define FD_INSTANTIATE(T)                                                                                         \
  template std::vector<Hypothesis> PrefixBeamSearch::decode<T>(const T*, int64_t, int64_t, int64_t, int64_t,     \
                                                               const BeamOptions&);                             \
  template void PrefixBeamSearch::advance<T>(const T*, int64_t, int64_t, int64_t);                                 \
  template std::vector<std::vector<Hypothesis>> beam_search_batch<T>(const T*, int64_t, int64_t, int64_t, int64_t, \
                                                                     int64_t, int64_t, const int64_t*,           \
                                                                     const BeamOptions&, int);
FD_INSTANTIATE(float)
FD_INSTANTIATE(double)
#undef FD_INSTANTIATE

}  // namespace fastdecoder
