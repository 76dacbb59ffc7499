// Compressed clusters: raw deflate (window 4 KiB, like qemu, so qemu can read
// them back) or zstd, stored byte-packed in host clusters whose refcount
// counts the compressed clusters touching them.
#include <libdeflate.h>
#include <zlib.h>
#include <zstd.h>

#include <cstring>
#include <memory>

#include "kiln/common/error.h"
#include "qcow2/node.h"

namespace kiln::block::qcow2 {
namespace {

std::byte* input_scratch(size_t bytes) {
  thread_local std::vector<std::byte> buffer;
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

struct Inflater {
  z_stream stream{};
  bool ready = false;
  ~Inflater() {
    if (ready) inflateEnd(&stream);
  }
};

struct ZstdContexts {
  ZSTD_DCtx* d = ZSTD_createDCtx();
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ~ZstdContexts() {
    ZSTD_freeDCtx(d);
    ZSTD_freeCCtx(c);
  }
};

ZstdContexts& zstd_contexts() {
  thread_local ZstdContexts contexts;
  return contexts;
}

// Returns false when the input does not decode to exactly out.size() bytes.
bool inflate_raw(std::span<const std::byte> in, std::span<std::byte> out) {
  thread_local Inflater inflater;
  z_stream& s = inflater.stream;
  if (!inflater.ready) {
    if (inflateInit2(&s, -15) != Z_OK) return false;
    inflater.ready = true;
  } else {
    inflateReset(&s);
  }
  s.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  int r = inflate(&s, Z_FINISH);
  // Decompression stops once a cluster is produced; the sector padding after it is ignored.
  return s.avail_out == 0 && (r == Z_STREAM_END || r == Z_OK || r == Z_BUF_ERROR);
}

bool unzstd(std::span<const std::byte> in, std::span<std::byte> out) {
  ZSTD_DCtx* d = zstd_contexts().d;
  ZSTD_DCtx_reset(d, ZSTD_reset_session_only);
  ZSTD_inBuffer input{in.data(), in.size(), 0};
  ZSTD_outBuffer output{out.data(), out.size(), 0};
  while (output.pos < output.size) {
    size_t r = ZSTD_decompressStream(d, &output, &input);
    if (ZSTD_isError(r)) return false;
    if (input.pos == input.size && output.pos < output.size && r != 0) return false;
    if (r == 0 && output.pos < output.size) {
      if (input.pos == input.size) return false;  // frame ended early
      // Another frame follows (qemu may write several); keep going.
    }
  }
  return true;
}

// Per-thread compressors, allocated once: no per-cluster allocation.
struct Compressors {
  // Level 6 is zlib's default, which qemu uses. libdeflate emits plain
  // RFC 1951 streams (what the spec asks for) several times faster than zlib;
  // its 32 KiB window exceeds the 4 KiB qemu compresses with, which qemu's
  // one-call inflate of a whole cluster accepts (distances only reach back
  // into the same cluster).
  std::unique_ptr<libdeflate_compressor, decltype(&libdeflate_free_compressor)> deflate{libdeflate_alloc_compressor(6),
                                                                                        &libdeflate_free_compressor};
  // zstd at its fastest level, used to spot incompressible clusters before
  // spending deflate's far slower match search on them.
  std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> probe{ZSTD_createCCtx(), &ZSTD_freeCCtx};
  std::vector<std::byte> probe_out;
};

Compressors& compressors() {
  thread_local Compressors instance;
  if (!instance.deflate || !instance.probe) throw Error(ENOMEM, "cannot allocate a compressor");
  return instance;
}

// Returns the compressed size, or 0 when the data does not shrink below `limit`.
size_t deflate_raw(std::span<const std::byte> in, std::byte* out, size_t limit) {
  Compressors& c = compressors();
  // Random data makes deflate search every position in vain; a cluster zstd's
  // fastest level cannot shrink below the limit is stored plainly at once.
  if (c.probe_out.size() < limit) c.probe_out.resize(limit);
  const size_t probe = ZSTD_compressCCtx(c.probe.get(), c.probe_out.data(), limit, in.data(), in.size(), 1);
  if (ZSTD_isError(probe)) return 0;
  return libdeflate_deflate_compress(c.deflate.get(), in.data(), in.size(), out, limit);
}

size_t zstd_compress(std::span<const std::byte> in, std::byte* out, size_t limit) {
  size_t r = ZSTD_compressCCtx(zstd_contexts().c, out, limit, in.data(), in.size(), ZSTD_CLEVEL_DEFAULT);
  return ZSTD_isError(r) ? 0 : r;
}

}  // namespace

void Qcow2Node::decompress_cluster(uint64_t descriptor, std::span<std::byte> out) {
  const uint32_t x = 62 - (cluster_bits_ - 8);
  const uint64_t host = descriptor & ((1ull << x) - 1);
  const uint64_t sectors = ((descriptor & ~(kCompressed | kCopied)) >> x) + 1;
  const uint64_t bytes = sectors * 512 - (host & 511);
  if (host >= file_->size()) {
    throw Error(EIO, fmt::format("'{}': compressed cluster at 0x{:x} lies past the end of the file", filename(), host));
  }
  std::byte* in = input_scratch(bytes);
  file_->read(host, {in, bytes});
  const bool ok = header_.compression_type == static_cast<uint8_t>(CompressionType::Zstd) ? unzstd({in, bytes}, out)
                                                                                           : inflate_raw({in, bytes}, out);
  if (!ok) throw Error(EIO, fmt::format("'{}': compressed cluster at 0x{:x} does not decompress", filename(), host));
}

uint64_t Qcow2Node::alloc_compressed_bytes(uint64_t length) {
  if (compressed_tail_ != 0) {
    const uint64_t cluster_end = (compressed_tail_ & ~(cluster_size_ - 1)) + cluster_size_;
    if (compressed_tail_ + length <= cluster_end) {
      const uint64_t host = compressed_tail_;
      update_refcount(host / cluster_size_, 1);
      compressed_tail_ = host + length == cluster_end ? 0 : host + length;
      return host;
    }
  }
  const uint64_t host = alloc_clusters(1);
  compressed_tail_ = length == cluster_size_ ? 0 : host + length;
  return host;
}

void Qcow2Node::check_compressed_write(uint64_t offset, uint64_t length) const {
  if (encrypted_) throw Error(ENOTSUP, fmt::format("'{}': compression is not supported with encryption", filename()));
  if (has_data_file_) throw Error(ENOTSUP, fmt::format("'{}': compression is not supported with an external data file", filename()));
  if (offset % cluster_size_ != 0) {
    throw Error(EINVAL, fmt::format("'{}': compressed writes must be cluster aligned (offset {})", filename(), offset));
  }
  if (length % cluster_size_ != 0 && offset + length != size()) {
    throw Error(EINVAL, fmt::format("'{}': compressed writes must cover whole clusters (length {})", filename(), length));
  }
}

void Qcow2Node::write_compressed(uint64_t offset, std::span<const std::byte> data) {
  thread_local PreparedCompressed prepared;
  compress_for_write(offset, data, prepared);
  write_compressed_prepared(offset, data, prepared);
}

// CPU work only: reads no metadata, so it runs on any thread without locks
// beyond the drain lock that keeps the header stable.
void Qcow2Node::compress_for_write(uint64_t offset, std::span<const std::byte> data, PreparedCompressed& out) {
  std::shared_lock drain(drain_);
  check_compressed_write(offset, data.size());
  const uint64_t units = (data.size() + cluster_size_ - 1) / cluster_size_;
  if (out.bytes.size() < units * cluster_size_) out.bytes.resize(units * cluster_size_);
  out.lengths.resize(units);
  const bool zstd = header_.compression_type == static_cast<uint8_t>(CompressionType::Zstd);
  const size_t limit = cluster_size_ - 1;
  for (uint64_t i = 0; i < units; ++i) {
    const uint64_t done = i * cluster_size_;
    const uint64_t chunk = std::min<uint64_t>(cluster_size_, data.size() - done);
    std::span<const std::byte> input = data.subspan(done, chunk);
    if (chunk < cluster_size_) {  // the image's last, partial cluster: compressed padded with zeroes
      thread_local std::vector<std::byte> padded;
      padded.assign(cluster_size_, std::byte{0});
      std::memcpy(padded.data(), input.data(), chunk);
      input = padded;
    }
    std::byte* packed = out.bytes.data() + done;
    out.lengths[i] = static_cast<uint32_t>(zstd ? zstd_compress(input, packed, limit) : deflate_raw(input, packed, limit));
  }
  out.ready = true;
}

void Qcow2Node::write_compressed_prepared(uint64_t offset, std::span<const std::byte> data, const PreparedCompressed& prepared) {
  if (!prepared.ready || prepared.lengths.size() != (data.size() + cluster_size_ - 1) / cluster_size_) return write_compressed(offset, data);
  std::shared_lock drain(drain_);
  check_writable();
  mark_bitmaps_dirty(offset, data.size());
  check_compressed_write(offset, data.size());
  const uint32_t x = 62 - (cluster_bits_ - 8);
  for (uint64_t i = 0; i < prepared.lengths.size(); ++i) {
    const uint64_t done = i * cluster_size_;
    const uint64_t guest = offset + done;
    const uint64_t chunk = std::min<uint64_t>(cluster_size_, data.size() - done);
    const size_t length = prepared.lengths[i];
    const std::byte* packed = prepared.bytes.data() + done;
    RangeGuard range(ranges_, guest, guest + cluster_size_, true);
    if (length == 0) {  // incompressible: store it plainly
      write_run(guest, data.subspan(done, chunk));
      continue;
    }
    uint64_t host = 0, l2_off = 0;
    {
      std::lock_guard lock(meta_);
      // As qemu: a compressed cluster never replaces one with a host cluster.
      if (l2_offset_of(l1_index(guest)) != 0) {
        const uint64_t current = l2_entry(load_table(l2_cache_, l2_offset_of(l1_index(guest)), true), l2_index(guest));
        if (current & kOffsetMask) {
          throw Error(EIO, fmt::format("'{}': compressed write to guest offset {}: the cluster is already allocated", filename(), guest));
        }
      }
      l2_off = writable_l2(l1_index(guest));
      mark_dirty_for_write();
      host = alloc_compressed_bytes(length);
    }
    file_->write(host, {packed, length});
    {
      std::lock_guard lock(meta_);
      std::byte* table = load_table(l2_cache_, l2_off, true);
      l2_cache_.find(l2_off)->dirty = true;
      const uint64_t index = l2_index(guest);
      const uint64_t old = l2_entry(table, index);
      classify(old, l2_off, index);
      const uint64_t extra_sectors = ((host + length - 1) >> 9) - (host >> 9);
      store_l2(table, index, kCompressed | (extra_sectors << x) | host, 0);
      release_entry(old);
    }
  }
}

}  // namespace kiln::block::qcow2
