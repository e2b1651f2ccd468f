// Documented size limits of the native decoders, checked before anything is allocated (README, decode section).
#pragma once
#include <cstdint>
#include <limits>

namespace fastdecoder {

// Largest beam width of the phoneme and word decoders: the per-frame buffers are O(beam_width) and the prefix
// trie grows by up to beam_width nodes per frame.
constexpr int kMaxBeamWidth = 1 << 16;

// Largest frame count of one batch: frame indices are stored as int32.
constexpr int64_t kMaxFrames = std::numeric_limits<int32_t>::max();

}  // namespace fastdecoder
