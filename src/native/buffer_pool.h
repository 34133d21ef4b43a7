// Page-aligned memory for O_DIRECT reads, recycled by size class. Chunks reach JavaScript as
// external buffers and come back here from their finalizers, which may run on any thread. Over
// its cap the pool drops the chunks released longest ago, whatever their size, so that it follows
// the sizes being read now instead of staying full of a size read earlier.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <vector>

namespace coriolis {

struct AlignedChunk {
  uint8_t* data = nullptr;
  size_t capacity = 0;
};

struct BufferPoolStats {
  size_t buffersInUse = 0;
  size_t bytesInUse = 0;  // capacity of the chunks, not the lengths JavaScript sees
  size_t buffersPooled = 0;
  size_t bytesPooled = 0;
};

class BufferPool {
 public:
  // A page satisfies the O_DIRECT memory alignment of every device and filesystem we meet.
  static constexpr size_t kAlignment = 4096;

  // Never destroyed: buffer finalizers can run while the process exits, after static destructors.
  static BufferPool& Instance() {
    static BufferPool* pool = new BufferPool();
    return *pool;
  }

  // Returns 0 or an errno value.
  int Acquire(size_t minimumBytes, AlignedChunk* chunk) {
    const size_t capacity = SizeClass(minimumBytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      std::deque<Recency::iterator>& sameSize = bySize_[capacity];
      if (!sameSize.empty()) {
        *chunk = *sameSize.back();
        recency_.erase(sameSize.back());
        sameSize.pop_back();
        stats_.buffersPooled--;
        stats_.bytesPooled -= capacity;
        CountInUse(capacity);
        return 0;
      }
    }
    void* memory = nullptr;
    const int err = posix_memalign(&memory, kAlignment, capacity);
    if (err != 0) return err;
    *chunk = {static_cast<uint8_t*>(memory), capacity};
    std::lock_guard<std::mutex> lock(mutex_);
    CountInUse(capacity);
    return 0;
  }

  void Release(AlignedChunk chunk) {
    std::vector<uint8_t*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.buffersInUse--;
      stats_.bytesInUse -= chunk.capacity;
      recency_.push_front(chunk);
      bySize_[chunk.capacity].push_back(recency_.begin());
      stats_.buffersPooled++;
      stats_.bytesPooled += chunk.capacity;
      EvictLocked(&evicted);
    }
    for (uint8_t* data : evicted) free(data);
  }

  void SetMaxPooledBytes(size_t bytes) {
    std::vector<uint8_t*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      maxPooledBytes_ = bytes;
      EvictLocked(&evicted);
    }
    for (uint8_t* data : evicted) free(data);
  }

  BufferPoolStats Stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  // Page multiples up to four pages, then four classes per doubling (16, 20, 24, 28, 32, 40 KiB…):
  // at most a quarter wasted, and aligned reads of a power-of-two size fill their chunk exactly.
  static size_t SizeClass(size_t bytes) {
    const size_t pages = (bytes + kAlignment - 1) / kAlignment;
    const size_t rounded = (pages == 0 ? 1 : pages) * kAlignment;
    if (rounded <= 4 * kAlignment) return rounded;
    const size_t quarter = (size_t{1} << (63 - __builtin_clzll(rounded - 1))) / 4;
    return (rounded + quarter - 1) / quarter * quarter;
  }

 private:
  BufferPool() = default;

  // The oldest chunk of a size is the first in its deque, as the oldest overall is the last in
  // recency_.
  void EvictLocked(std::vector<uint8_t*>* evicted) {
    while (stats_.bytesPooled > maxPooledBytes_) {
      const AlignedChunk oldest = recency_.back();
      bySize_[oldest.capacity].pop_front();
      recency_.pop_back();
      stats_.buffersPooled--;
      stats_.bytesPooled -= oldest.capacity;
      evicted->push_back(oldest.data);
    }
  }

  void CountInUse(size_t capacity) {
    stats_.buffersInUse++;
    stats_.bytesInUse += capacity;
  }

  using Recency = std::list<AlignedChunk>;

  std::mutex mutex_;
  Recency recency_;  // pooled chunks, most recently released first
  std::map<size_t, std::deque<Recency::iterator>> bySize_;  // by capacity, oldest first
  size_t maxPooledBytes_ = size_t{128} << 20;
  BufferPoolStats stats_;
};

}  // namespace coriolis
