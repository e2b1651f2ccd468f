// Lexicon-constrained CTC prefix beam search with an n-gram LM (see word_decoder.hpp for the definition).
#include "words/word_decoder.hpp"

#include <algorithm>
#include <functional>
#include <stdexcept>
#include <string>

#include "limits.hpp"
#include "thread_pool.hpp"

namespace fastdecoder {
namespace words {

WordDecoder::WordDecoder(std::shared_ptr<const Lexicon> lexicon, std::shared_ptr<const ArpaLM> lm,
                         std::vector<int32_t> lm_ids, const WordDecoderOptions& opt)
    : lex_(std::move(lexicon)), lm_(std::move(lm)), lm_ids_(std::move(lm_ids)), opt_(opt) {
  if (!lex_) throw std::invalid_argument("word decoder: no lexicon");
  if (lex_->num_words() == 0) throw std::invalid_argument("word decoder: the lexicon is empty");
  if (opt_.beam_width < 1 || opt_.beam_width > fastdecoder::kMaxBeamWidth || opt_.nbest < 1)
    throw std::invalid_argument("beam_width must lie in [1, " + std::to_string(fastdecoder::kMaxBeamWidth) +
                                "] and nbest must be >= 1");
  if (lm_) {
    if (lm_ids_.size() != static_cast<size_t>(lex_->num_words()))
      throw std::invalid_argument("word decoder: lm_ids needs one entry per lexicon word");
    for (int32_t& id : lm_ids_) {
      if (id >= lm_->vocab_size()) throw std::invalid_argument("word decoder: lm id out of range");
      if (id < 0) id = lm_->unk();  // -1 stays -1 when the LM has no <unk>: scored unk_log10
    }
  } else {
    lm_ids_.assign(static_cast<size_t>(lex_->num_words()), -1);
  }
  lookahead_.assign(static_cast<size_t>(lex_->num_nodes()), 0.0);
  if (lm_ && opt_.lm_lookahead) {
    // Unigram ln p per word, max over each subtree; children always have larger ids than their parent.
    const int32_t nn = lex_->num_nodes();
    std::vector<double> best(static_cast<size_t>(nn), kNegInf);
    for (int32_t n = nn - 1; n > 0; --n) {
      const int32_t* w = lex_->node_words(n);
      for (int32_t i = 0; i < lex_->node_num_words(n); ++i) {
        const int32_t id = lm_ids_[w[i]];
        const double l10 = id >= 0 ? lm_->log10_prob(nullptr, 0, id) : opt_.unk_log10;
        best[n] = std::max(best[n], l10 * kLn10);
      }
      const int32_t p = lex_->node(n).parent;
      if (p > 0) best[p] = std::max(best[p], best[n]);
    }
    for (int32_t n = 1; n < nn; ++n)
      lookahead_[n] = opt_.lm_weight * std::min(0.0, std::max(best[n], -1e30));
  }
}

namespace detail {

struct Hist {  // a word history: a node of the per-sentence tree of word sequences
  int32_t parent, word, lm_state, nwords;
  double lm;     // sum of natural-log LM probabilities of the words
  double bonus;  // lm_weight * lm + word_bonus * nwords
};

struct Hyp {
  int32_t hist, lex, last;  // last: the last label (phoneme, SIL) or -1 for the empty prefix
  double pb, pnb;
  double ctc;    // lse(pb, pnb) (beam entries)
  double extra;  // ranking score - ctc: hist bonus + lookahead(lex)
  double rank;
};

class Searcher {
 public:
  Searcher(const WordDecoder& d) : d_(d), lex_(d.lexicon()), opt_(d.options()) {
    if (d.lm()) scorer_ = std::make_unique<LmScorer>(*d.lm(), opt_.unk_log10);
  }

  template <typename T>
  std::vector<WordHypothesis> decode(const T* x, int64_t frames, int64_t row_stride, int64_t col_stride) {
    begin();
    advance(x, frames, row_stride, col_stride);
    return finish(opt_.nbest);
  }
  void begin();
  template <typename T>
  void advance(const T* x, int64_t frames, int64_t row_stride, int64_t col_stride) {
    double lp[kNumClasses];
    for (int64_t t = 0; t < frames; ++t) {
      const T* src = x + t * row_stride;
      for (int v = 0; v < kNumClasses; ++v) lp[v] = static_cast<double>(src[v * col_stride]);
      step(lp);
    }
  }
  void step(const double* lp);  // one frame of (41,) log-probabilities
  std::vector<WordHypothesis> finish(int nbest);  // sentence end (adds the final word histories)
  WordPartial partial() const;

  size_t memory_bytes() const {
    return hists_.capacity() * sizeof(Hist) + (beam_.capacity() + cands_.capacity()) * sizeof(Hyp) +
           scratch_.capacity() * sizeof(double) + map_.memory_bytes() + hist_map_.memory_bytes() +
           (scorer_ ? scorer_->memory_bytes() : 0);
  }

 private:
  int32_t hist_child(int32_t h, int32_t w) {
    bool fresh = false;
    const int32_t id = hist_map_.insert(pack_key(h, w), static_cast<int32_t>(hists_.size()), &fresh);
    if (!fresh) return id;
    const Hist p = hists_[h];
    Hist c{h, w, 0, p.nwords + 1, p.lm, 0.0};
    if (scorer_) c.lm += kLn10 * scorer_->score(p.lm_state, d_.lm_ids()[w], &c.lm_state);
    c.bonus = opt_.lm_weight * c.lm + opt_.word_bonus * c.nwords;
    hists_.push_back(c);
    return id;
  }
  WordHypothesis make(int32_t h, double score, double acoustic, double lm) const {
    WordHypothesis out;
    for (int32_t i = h; i > 0; i = hists_[i].parent) out.words.push_back(hists_[i].word);
    std::reverse(out.words.begin(), out.words.end());
    out.score = score;
    out.acoustic = acoustic;
    out.lm = lm;
    return out;
  }

  const WordDecoder& d_;
  const Lexicon& lex_;
  const WordDecoderOptions& opt_;
  std::unique_ptr<LmScorer> scorer_;
  std::vector<Hist> hists_;
  FlatMap hist_map_;
  std::vector<Hyp> beam_, cands_;  // beam_: the best first, the rest in no particular order
  FlatMap map_;
  std::vector<double> scratch_;
  std::vector<std::pair<double, int32_t>> labels_;
  std::vector<int32_t> order_, ties_;
  std::vector<std::pair<int32_t, double>> finals_;
};

inline bool ranks_before(const Hyp& a, const Hyp& b) {
  if (a.rank != b.rank) return a.rank > b.rank;
  if (a.hist != b.hist) return a.hist < b.hist;
  return a.lex < b.lex;
}

void Searcher::begin() {
  hists_.clear();
  hist_map_.clear();
  hists_.push_back(Hist{-1, -1, scorer_ ? scorer_->start_state() : 0, 0, 0.0, 0.0});
  beam_.assign(1, Hyp{0, 0, -1, 0.0, kNegInf, 0.0, 0.0, 0.0});
}

void Searcher::step(const double* lp) {
  const int k = opt_.beam_width;
  const double cut = opt_.token_min_logprob;
  const std::vector<double>& la = d_.lookahead();
  const double lp_blank = lp[kBlank] - opt_.blank_penalty;
  const double lp_sil = lp[kSil];
  labels_.clear();  // sorted by descending lp on first use in this frame
  bool labels_sorted = false;
  double top_lp = kNegInf;
  for (int32_t s = 1; s <= kNumPhonemes; ++s)
    if (lp[s] >= cut && lp[s] > kNegInf) {
      labels_.emplace_back(lp[s], s);
      top_lp = std::max(top_lp, lp[s]);
    }

  const int n = static_cast<int>(beam_.size());
  cands_.resize(static_cast<size_t>(n));
  map_.clear();
  bool ins = false;
  // 1. Beam hypotheses stay (blank; repeat of the last label collapses).
  for (int i = 0; i < n; ++i) {
    const Hyp& e = beam_[i];
    Hyp& c = cands_[i];
    c = e;
    c.pb = e.ctc + lp_blank;
    c.pnb = e.last >= 0 ? e.pnb + lp[e.last] : kNegInf;
    map_.insert(pack_key(e.hist, e.lex), i, &ins);
  }
  // ... and take the phoneme extension from their trie parent when that is in the beam too.
  for (int i = 0; i < n; ++i) {
    const Hyp& e = beam_[i];
    if (e.lex == 0) continue;
    const Lexicon::Node& nd = lex_.node(e.lex);
    const int32_t j = map_.find(pack_key(e.hist, nd.parent));
    if (j < 0) continue;
    const Hyp& p = beam_[j];
    const double mass = (nd.token == p.last ? p.pb : p.ctc) + lp[nd.token];
    cands_[i].pnb = lse(cands_[i].pnb, mass);
  }
  for (int i = 0; i < n; ++i) {  // lower bounds of their final scores (SIL may still add mass)
    Hyp& c = cands_[i];
    c.ctc = lse(c.pb, c.pnb);
    c.rank = c.ctc + c.extra;
  }
  // thr: the k-th best current ranking score of the candidates. Every candidate's score only grows until the
  // end of the frame, so thr never exceeds the final k-th best: a new hypothesis below thr cannot enter the beam.
  // It is recomputed whenever k/2 more candidates have arrived.
  double thr = kNegInf;
  size_t next_update = static_cast<size_t>(k);
  auto update_threshold = [&]() {
    const size_t m = cands_.size();
    scratch_.resize(m);
    for (size_t i = 0; i < m; ++i) scratch_[i] = cands_[i].rank;
    std::nth_element(scratch_.begin(), scratch_.begin() + (k - 1), scratch_.end(), std::greater<double>());
    thr = scratch_[k - 1];
    next_update = m + static_cast<size_t>(std::max(1, k / 2));
  };
  if (cands_.size() >= next_update) update_threshold();

  // 2. New hypotheses (the best parent first: it raises thr early).
  for (int i = 0; i < n; ++i) {
    const Hyp& e = beam_[i];
    const Lexicon::Node& nd = lex_.node(e.lex);
    // SIL closes the word (one hypothesis per homophone). Never pruned here: (h + w, root) can have several
    // parents (pronunciations), so its mass is complete only after this loop.
    if (nd.word_end > nd.word_begin && lp_sil > kNegInf && e.ctc > kNegInf) {
      const double mass = e.ctc + lp_sil;
      const int32_t* ws = lex_.node_words(e.lex);
      for (int32_t q = 0; q < nd.word_end - nd.word_begin; ++q) {
        // Below the cut only existing hypotheses take mass, and (h + w, root) can exist only if h + w does.
        const int32_t h2 = lp_sil >= cut ? hist_child(e.hist, ws[q]) : hist_map_.find(pack_key(e.hist, ws[q]));
        if (h2 < 0) continue;
        const uint64_t key = pack_key(h2, 0);
        const int32_t j = map_.find(key);
        if (j >= 0) {
          Hyp& c = cands_[j];
          c.pnb = lse(c.pnb, mass);
          c.ctc = lse(c.ctc, mass);
          c.rank = c.ctc + c.extra;
        } else if (lp_sil >= cut) {
          map_.insert(key, static_cast<int32_t>(cands_.size()), &ins);
          const double extra = hists_[h2].bonus;
          cands_.push_back(Hyp{h2, 0, kSil, kNegInf, mass, mass, extra, mass + extra});
          if (cands_.size() >= next_update) update_threshold();
        }
      }
    }
    // Phonemes the trie allows. rank(child) <= e.rank + lp[s], so a label below thr - e.rank cannot enter: nodes
    // with few children try each; others walk the labels by descending lp and stop at the first one below.
    if (e.rank + top_lp < thr) continue;
    const double hist_bonus = hists_[e.hist].bonus;
    auto propose = [&](int32_t s, double l, int32_t child) {
      const uint64_t key = pack_key(e.hist, child);
      if (map_.find(key) >= 0) return;  // in the beam: its mass was added in step 1
      const double mass = (s == e.last ? e.pb : e.ctc) + l;
      if (mass == kNegInf) return;
      const double extra = hist_bonus + la[child];
      const double rank = mass + extra;
      if (rank < thr) return;
      map_.insert(key, static_cast<int32_t>(cands_.size()), &ins);
      cands_.push_back(Hyp{e.hist, child, s, kNegInf, mass, mass, extra, rank});
      if (cands_.size() >= next_update) update_threshold();
    };
    const int n_children = popcount64(nd.child_mask);
    if (n_children <= 6) {
      const int32_t* kids = lex_.children(e.lex);
      uint64_t mask = nd.child_mask;
      for (int q = 0; q < n_children; ++q, mask &= mask - 1) {
        const int32_t s = ctz64(mask);
        const double l = lp[s];
        if (l < cut || l == kNegInf || e.rank + l < thr) continue;
        propose(s, l, kids[q]);
      }
    } else {
      if (!labels_sorted) {
        std::sort(labels_.begin(), labels_.end(), [](const auto& a, const auto& b) {
          return a.first > b.first || (a.first == b.first && a.second < b.second);
        });
        labels_sorted = true;
      }
      for (const auto& [l, s] : labels_) {
        if (e.rank + l < thr) break;
        if (nd.child_mask >> s & 1) propose(s, l, lex_.child(e.lex, s));
      }
    }
  }

  // 3. The k best by ranking score form the next beam (the best first, the rest in no order): the k-th best
  //    score by a selection on plain doubles, then one pass; exact ties at the k-th score by (hist, node).
  //    A hypothesis of zero mass (-inf inputs) is none: it leaves the beam, so no later label (not even one
  //    below the cut) can feed it.
  cands_.erase(std::remove_if(cands_.begin(), cands_.end(), [](const Hyp& c) { return c.ctc == kNegInf; }),
               cands_.end());
  const int m = static_cast<int>(cands_.size());
  order_.clear();
  if (m <= k) {
    for (int i = 0; i < m; ++i) order_.push_back(i);
  } else {
    scratch_.resize(static_cast<size_t>(m));
    for (int i = 0; i < m; ++i) scratch_[i] = cands_[i].rank;
    std::nth_element(scratch_.begin(), scratch_.begin() + (k - 1), scratch_.end(), std::greater<double>());
    const double kth = scratch_[k - 1];
    ties_.clear();
    for (int i = 0; i < m; ++i) {
      if (cands_[i].rank > kth) order_.push_back(i);
      else if (cands_[i].rank == kth) ties_.push_back(i);
    }
    const size_t need = static_cast<size_t>(k) - order_.size();
    if (ties_.size() > need)
      std::nth_element(ties_.begin(), ties_.begin() + (need - 1), ties_.end(),
                       [this](int32_t a, int32_t b) { return ranks_before(cands_[a], cands_[b]); });
    order_.insert(order_.end(), ties_.begin(), ties_.begin() + static_cast<std::ptrdiff_t>(need));
  }
  beam_.resize(order_.size());
  size_t best = 0;
  for (size_t i = 0; i < order_.size(); ++i) {
    beam_[i] = cands_[order_[i]];
    if (ranks_before(beam_[i], beam_[best])) best = i;
  }
  if (best) std::swap(beam_[0], beam_[best]);
}

std::vector<WordHypothesis> Searcher::finish(int nbest) {
  const double lmw = opt_.lm_weight;
  // Sentence end: complete hypotheses, merged per word sequence, plus </s>.
  finals_.clear();
  map_.clear();
  bool ins = false;
  auto add_final = [&](int32_t h, double ctc) {
    const int32_t j = map_.insert(pack_key(h, 0), static_cast<int32_t>(finals_.size()), &ins);
    if (ins)
      finals_.emplace_back(h, ctc);
    else
      finals_[j].second = lse(finals_[j].second, ctc);
  };
  for (const Hyp& e : beam_) {
    if (e.ctc == kNegInf) continue;
    if (e.lex == 0) {
      add_final(e.hist, e.ctc);
    } else {
      const int32_t* ws = lex_.node_words(e.lex);
      for (int32_t q = 0; q < lex_.node_num_words(e.lex); ++q) add_final(hist_child(e.hist, ws[q]), e.ctc);
    }
  }
  std::vector<Hyp> out;
  out.reserve(finals_.size());
  const int32_t eos = d_.lm() ? d_.lm()->eos() : -1;
  for (const auto& [h, ctc] : finals_) {
    double end = 0.0;
    if (scorer_ && eos >= 0) {
      int32_t unused;
      end = kLn10 * scorer_->score(hists_[h].lm_state, eos, &unused);
    }
    // rank = score, extra = LM total (incl. </s>), pb = acoustic
    out.push_back(Hyp{h, 0, 0, ctc, 0.0, ctc, hists_[h].lm + end, ctc + hists_[h].bonus + lmw * end});
  }
  std::sort(out.begin(), out.end(), ranks_before);
  std::vector<WordHypothesis> result;
  if (out.empty()) {  // nothing complete: the best hypothesis' completed words
    if (!beam_.empty()) {
      const Hyp& b = beam_.front();
      result.push_back(make(b.hist, b.rank, b.ctc, hists_[b.hist].lm));
    }
    return result;
  }
  const size_t m = std::min(out.size(), static_cast<size_t>(nbest));
  for (size_t i = 0; i < m; ++i) result.push_back(make(out[i].hist, out[i].rank, out[i].pb, out[i].extra));
  return result;
}

WordPartial Searcher::partial() const {
  WordPartial p;
  const Hyp& best = beam_.front();  // the beam keeps its best first
  int32_t common = best.hist;       // deepest common ancestor of the beam's word histories
  for (const Hyp& e : beam_) {
    int32_t a = common, b = e.hist;
    while (hists_[a].nwords > hists_[b].nwords) a = hists_[a].parent;
    while (hists_[b].nwords > hists_[a].nwords) b = hists_[b].parent;
    while (a != b) a = hists_[a].parent, b = hists_[b].parent;
    common = a;
  }
  p.words = make(best.hist, 0.0, 0.0, 0.0).words;
  p.stable = hists_[common].nwords;
  p.score = best.rank;
  return p;
}

}  // namespace detail

template <typename T>
std::vector<std::vector<WordHypothesis>> WordDecoder::decode_batch(const T* log_probs, int64_t batch, int64_t frames,
                                                                   int64_t vocab, int64_t batch_stride,
                                                                   int64_t row_stride, int64_t col_stride,
                                                                   const int64_t* lengths, int num_threads,
                                                                   size_t* workspace_bytes) const {
  if (vocab != kNumClasses)
    throw std::invalid_argument("log_probs must have " + std::to_string(kNumClasses) + " classes, got " +
                                std::to_string(vocab));
  for (int64_t b = 0; b < batch; ++b)
    if (lengths[b] < 0 || lengths[b] > frames) throw std::invalid_argument("length out of range");
  std::vector<std::vector<WordHypothesis>> out(static_cast<size_t>(batch));
  std::vector<int64_t> bad(static_cast<size_t>(2 * batch), -1);
  const int workers = resolve_num_threads(num_threads, batch);
  std::vector<std::unique_ptr<detail::Searcher>> searchers;
  for (int w = 0; w < workers; ++w) searchers.push_back(std::make_unique<detail::Searcher>(*this));
  parallel_for(batch, workers, [&](int64_t b, int w) {
    const T* x = log_probs + b * batch_stride;
    if (find_invalid_log_prob(x, lengths[b], vocab, row_stride, col_stride, &bad[2 * b], &bad[2 * b + 1])) return;
    out[b] = searchers[w]->decode(x, lengths[b], row_stride, col_stride);
  });
  fastdecoder::throw_first_invalid_log_prob(log_probs, batch, batch_stride, row_stride, col_stride, bad.data());
  if (workspace_bytes) {
    size_t m = 0;
    for (const auto& s : searchers) m = std::max(m, s->memory_bytes());
    *workspace_bytes = m;
  }
  return out;
}

WordStream::WordStream(std::shared_ptr<const WordDecoder> decoder) : decoder_(std::move(decoder)) {
  if (!decoder_) throw std::invalid_argument("word stream: no decoder");
  search_ = std::make_unique<detail::Searcher>(*decoder_);
  search_->begin();
}

WordStream::~WordStream() = default;

void WordStream::reset() {
  search_->begin();
  frames_ = 0;
}

template <typename T>
void WordStream::advance(const T* log_probs, int64_t frames, int64_t row_stride, int64_t col_stride) {
  int64_t bad[2] = {-1, -1};  // (frame of this advance, class) of the first value outside the input policy
  find_invalid_log_prob(log_probs, frames, kNumClasses, row_stride, col_stride, &bad[0], &bad[1]);
  fastdecoder::throw_first_invalid_log_prob(log_probs, 1, 0, row_stride, col_stride, bad);
  search_->advance(log_probs, frames, row_stride, col_stride);
  frames_ += frames;
}

WordPartial WordStream::partial() const { return search_->partial(); }

std::vector<WordHypothesis> WordStream::finish(int nbest) { return search_->finish(nbest); }

template void WordStream::advance<float>(const float*, int64_t, int64_t, int64_t);
template void WordStream::advance<double>(const double*, int64_t, int64_t, int64_t);

template std::vector<std::vector<WordHypothesis>> WordDecoder::decode_batch<float>(
    const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const int64_t*, int, size_t*) const;
template std::vector<std::vector<WordHypothesis>> WordDecoder::decode_batch<double>(
    const double*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const int64_t*, int, size_t*) const;

}  // namespace words
}  // namespace fastdecoder
