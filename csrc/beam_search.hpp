// Exact CTC prefix beam search in natural-log space: plain C++, no Python.
//
// Definition (the textbook algorithm; tests/ctc_oracle.py implements the same in plain Python):
// a beam entry is one distinct prefix y (collapsed label sequence) with pb(y) / pnb(y), the log-mass of the
// alignments so far that collapse to y and end in blank / in y's last label c; score(y) = lse(pb, pnb).
// Start {(): pb = 0}. At frame t with log-probabilities lp[.]:
//   pb'(y)    += score(y) + lp[blank]        pnb'(y)   += pnb(y) + lp[c]        (blank; repeat collapses)
//   pnb'(y+c) += pb(y) + lp[c]               pnb'(y+s) += score(y) + lp[s]    (s != c, s != blank)
// with += meaning log-sum-exp, so each prefix is one merged entry; a prefix of zero mass (-inf) is no candidate.
// Keep the `beam_width` best by score; order = score descending, exact ties to the lexicographically smaller token
// sequence (a proper prefix first). Final ranking: the same order.
//
// Lossless pruning: a new prefix y+s has exactly one parent, so its score is final when proposed and is
// <= score(y) + lp[s]. Beam prefixes are scored first (they set a k-th-best threshold), then labels are tried
// per prefix in descending lp order (sorted once per frame) and the loop stops once score(y) + lp[s] < threshold:
// such a prefix cannot enter the beam, so the result equals the unpruned search. The threshold rises as proposals
// arrive (the buffer of proposals is cut back to its k best by a selection whenever it reaches 2k).
// Lossy option: labels with lp[s] < token_min_logprob propose no new prefix (beam prefixes keep all their mass).
#pragma once
#include <cstdint>
#include <limits>
#include <vector>

#include "limits.hpp"

namespace fastdecoder {

struct BeamOptions {
  int beam_width = 20;
  int blank = 0;
  int nbest = 1;
  // Lossy cut; -inf = off (exact).
  double token_min_logprob = -std::numeric_limits<double>::infinity();
  bool frames = false;  // also report, per token, the frame at which its prefix first entered the beam
};

struct Hypothesis {
  std::vector<int32_t> tokens;
  std::vector<int32_t> frames;  // empty unless BeamOptions::frames
  double log_score = 0.0;
};

// The stable prefix of a partial result: every hypothesis in the beam starts with it. Each next-frame prefix is a
// beam prefix y or an extension y+s of one, so the longest common prefix of the beam only ever grows, and the final
// hypotheses (taken from the beam) start with it: it can no longer change.
struct Partial {
  std::vector<int32_t> tokens;  // the current best prefix (the final ranking's first, were the sentence to end now)
  int32_t stable = 0;           // tokens[0:stable] is the longest common prefix of all beam prefixes
  double log_score = 0.0;
};

// The search state of one sentence, advanced frame by frame; decode() is begin() + advance() over all frames +
// hypotheses(), so offline and streaming decoding are one implementation. Reusable: begin() starts a new sentence.
// Cache-line aligned: the vector headers change on every push, and workspaces of different threads sit side by
// side in one array (false sharing cost a third of the two-thread speed-up).
class alignas(64) PrefixBeamSearch {
 public:
  // One sentence: (frames, vocab) natural-log probabilities at element strides (row, col).
  // Returns up to nbest hypotheses, best first. Inputs must be finite (beam_search_batch checks).
  template <typename T>
  std::vector<Hypothesis> decode(const T* log_probs, int64_t frames, int64_t vocab, int64_t row_stride,
                                 int64_t col_stride, const BeamOptions& opt);

  // Start a sentence over `vocab` classes (frames_hint: expected frames, 0 if unknown; only sizes a reservation).
  void begin(const BeamOptions& opt, int64_t vocab, int64_t frames_hint = 0);
  // Advance by `frames` frames of (frames, vocab) finite natural-log probabilities at element strides.
  template <typename T>
  void advance(const T* log_probs, int64_t frames, int64_t row_stride, int64_t col_stride);
  // Up to nbest hypotheses of the frames so far, best first (the state is not changed: advance may go on).
  std::vector<Hypothesis> hypotheses(int nbest) const;
  Partial partial() const;
  int64_t frames() const { return t_; }
  int64_t vocab() const { return vocab_; }

 private:
  // One distinct prefix (canonical: one node per token sequence); children form a linked list. `jump`: a skew-binary
  // jump pointer to an ancestor (Myers 1983; its depth depends on the node's depth only), so the common ancestor of
  // two prefixes is found in O(log depth) steps: exact ties between prefixes that diverged long ago stay cheap.
  struct Node {
    int32_t parent, token, depth, first_child, next_sibling, frame, stamp, slot, jump;
  };
  struct Entry {  // a prefix in the beam
    int32_t node, last;
    double pb, pnb, score;
  };
  struct Cand {  // a next-frame prefix: the sequence of node `parent` followed by `token` (root: parent -1)
    double score, pb, pnb;
    int32_t node, parent, token;  // node: the existing node, or -1 for a prefix not in the beam
  };

  Cand keep_best(int k);  // cut cands_ (more than k) to its k best, in no order; returns the k-th best

  int32_t child(int32_t parent, int32_t token, int32_t frame);
  // Lexicographic order of seq(pa)+[ta] vs seq(pb)+[tb] (-1, 0, 1); walks up to the common ancestor only.
  int compare_tokens(int32_t pa, int32_t ta, int32_t pb, int32_t tb) const;
  int32_t ancestor_at(int32_t n, int32_t depth) const;  // the ancestor of node n at a depth <= n's
  // "Ranks before": higher score, then the lexicographically smaller token sequence.
  bool before(const Cand& a, const Cand& b) const {
    if (a.score != b.score) return a.score > b.score;
    return compare_tokens(a.parent, a.token, b.parent, b.token) < 0;
  }

  void step(const double* lp);  // one frame (row_ holds its log-probabilities)
  bool entry_before(const Entry& a, const Entry& b) const {  // the final ranking: score, then tokens
    if (a.score != b.score) return a.score > b.score;
    return compare_tokens(nodes_[a.node].parent, nodes_[a.node].token, nodes_[b.node].parent,
                          nodes_[b.node].token) < 0;
  }
  std::vector<int32_t> tokens_of(int32_t node) const;

  BeamOptions opt_;
  int64_t vocab_ = 0, t_ = 0;  // classes; frames advanced so far
  std::vector<Node> nodes_;
  std::vector<Entry> beam_, next_beam_;
  std::vector<Cand> cands_, spare_, ties_;
  std::vector<double> scores_;
  std::vector<double> row_;
  double best_ = 0.0;  // best score in beam_
  std::vector<std::pair<double, int32_t>> labels_;
  std::vector<uint64_t> child_mask_;
};

// A batch of sentences (B, T, V) with element strides; lengths (B,) in [0, T]. num_threads 0 = all cores.
// Throws std::invalid_argument naming [b, t, v] (smallest b) if a used frame holds a NaN or an infinity.
template <typename T>
std::vector<std::vector<Hypothesis>> beam_search_batch(const T* log_probs, int64_t batch, int64_t frames,
                                                       int64_t vocab, int64_t batch_stride, int64_t row_stride,
                                                       int64_t col_stride, const int64_t* lengths,
                                                       const BeamOptions& opt, int num_threads);

}  // namespace fastdecoder
