// A minimal parallel-for over independent work items: plain C++, no Python.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace fastdecoder {

// Upper bound on the workers of one call: kMaxThreadsPerCore x the hardware threads (a larger request is clamped;
// the Python wrappers warn). Decoding is CPU-bound, so more threads than cores only cost memory.
constexpr int kMaxThreadsPerCore = 4;

inline int hardware_threads() {
  const int n = static_cast<int>(std::thread::hardware_concurrency());
  return n > 0 ? n : 1;
}

inline int max_threads() { return kMaxThreadsPerCore * hardware_threads(); }

// Number of workers for a request: 0 = all hardware threads; at most max_threads() and the number of items (>= 1).
inline int resolve_num_threads(int requested, int64_t items) {
  int n = requested > 0 ? std::min(requested, max_threads()) : hardware_threads();
  if (items < n) n = static_cast<int>(std::max<int64_t>(items, 1));
  return n;
}

// Calls fn(item, worker) for item in [0, items) on `workers` threads (the calling thread is worker 0).
// Items are handed out one at a time from an atomic counter, so uneven sentence lengths balance themselves.
// The first exception thrown by any call is rethrown here after all workers have stopped. If the system refuses
// to create a thread, the work runs on the threads already started (results do not depend on the count).
template <typename Fn>
void parallel_for(int64_t items, int workers, Fn&& fn) {
  if (workers <= 1 || items <= 1) {
    for (int64_t i = 0; i < items; ++i) fn(i, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&](int worker) {
    try {
      for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < items;
           i = next.fetch_add(1, std::memory_order_relaxed))
        fn(i, worker);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next.store(items);  // stop handing out work
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(workers - 1));
  for (int w = 1; w < workers; ++w) {
    try {
      threads.emplace_back(work, w);
    } catch (const std::system_error&) {  // no more threads (address space, ulimit -u): the ones running suffice
      break;
    }
  }
  work(0);
  for (auto& th : threads) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace fastdecoder
