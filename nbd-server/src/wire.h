// NBD wire constants (docs: nbd-proto.md, qemu-nbd-extensions.txt) and
// big-endian field helpers. Only facts from the specification live here.
#pragma once

#include <endian.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace kiln::nbd {

inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943ULL;      // "NBDMAGIC"
inline constexpr uint64_t kOptionMagic = 0x49484156454F5054ULL;   // "IHAVEOPT"
inline constexpr uint64_t kOptionReplyMagic = 0x3e889045565a9ULL;
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;
// EXTENDED_HEADERS extension (NetworkBlockDevice/nbd extension-ext-header branch).
inline constexpr uint32_t kExtendedRequestMagic = 0x21e41c71;
inline constexpr uint32_t kExtendedReplyMagic = 0x6e8a278c;

// Handshake flags (server) and client flags.
inline constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
inline constexpr uint16_t kFlagNoZeroes = 1 << 1;
inline constexpr uint32_t kClientFixedNewstyle = 1 << 0;
inline constexpr uint32_t kClientNoZeroes = 1 << 1;

// Transmission flags.
enum : uint16_t {
  kTxHasFlags = 1 << 0,
  kTxReadOnly = 1 << 1,
  kTxSendFlush = 1 << 2,
  kTxSendFua = 1 << 3,
  kTxRotational = 1 << 4,
  kTxSendTrim = 1 << 5,
  kTxSendWriteZeroes = 1 << 6,
  kTxSendDf = 1 << 7,
  kTxCanMultiConn = 1 << 8,
  kTxSendResize = 1 << 9,
  kTxSendCache = 1 << 10,
  kTxSendFastZero = 1 << 11,
};

// Options.
enum : uint32_t {
  kOptExportName = 1,
  kOptAbort = 2,
  kOptList = 3,
  kOptStartTls = 5,
  kOptInfo = 6,
  kOptGo = 7,
  kOptStructuredReply = 8,
  kOptListMetaContext = 9,
  kOptSetMetaContext = 10,
  kOptExtendedHeaders = 11,
};

// Option replies.
inline constexpr uint32_t kRepErrorBit = 1u << 31;
enum : uint32_t {
  kRepAck = 1,
  kRepServer = 2,
  kRepInfo = 3,
  kRepMetaContext = 4,
  kRepErrUnsup = kRepErrorBit | 1,
  kRepErrPolicy = kRepErrorBit | 2,
  kRepErrInvalid = kRepErrorBit | 3,
  kRepErrPlatform = kRepErrorBit | 4,
  kRepErrTlsReqd = kRepErrorBit | 5,
  kRepErrUnknown = kRepErrorBit | 6,
  kRepErrShutdown = kRepErrorBit | 7,
  kRepErrBlockSizeReqd = kRepErrorBit | 8,
  kRepErrTooBig = kRepErrorBit | 9,
  kRepErrExtHeaderReqd = kRepErrorBit | 10,
};

// NBD_INFO_* types.
enum : uint16_t { kInfoExport = 0, kInfoName = 1, kInfoDescription = 2, kInfoBlockSize = 3 };

// Commands and command flags.
enum : uint16_t {
  kCmdRead = 0,
  kCmdWrite = 1,
  kCmdDisc = 2,
  kCmdFlush = 3,
  kCmdTrim = 4,
  kCmdCache = 5,
  kCmdWriteZeroes = 6,
  kCmdBlockStatus = 7,
};
enum : uint16_t {
  kCmdFlagFua = 1 << 0,
  kCmdFlagNoHole = 1 << 1,
  kCmdFlagDf = 1 << 2,
  kCmdFlagReqOne = 1 << 3,
  kCmdFlagFastZero = 1 << 4,
  kCmdFlagPayloadLen = 1 << 5,  // extended headers: length is a payload length
};

// Structured reply chunks.
inline constexpr uint16_t kReplyFlagDone = 1;
enum : uint16_t {
  kChunkNone = 0,
  kChunkOffsetData = 1,
  kChunkOffsetHole = 2,
  kChunkBlockStatus = 5,
  kChunkBlockStatusExt = 6,  // extended headers: 64-bit extent lengths
  kChunkError = (1 << 15) | 1,
  kChunkErrorOffset = (1 << 15) | 2,
};

// base:allocation flags.
inline constexpr uint32_t kStateHole = 1;
inline constexpr uint32_t kStateZero = 2;

// Errors on the wire.
enum : uint32_t {
  kErrPerm = 1,
  kErrIo = 5,
  kErrNoMem = 12,
  kErrInval = 22,
  kErrNoSpc = 28,
  kErrOverflow = 75,
  kErrNotSup = 95,
  kErrShutdown = 108,
};

inline constexpr size_t kRequestHeaderSize = 28;
inline constexpr size_t kExtendedRequestHeaderSize = 32;
inline constexpr size_t kExtendedReplyHeaderSize = 32;
inline constexpr size_t kOptionHeaderSize = 16;
inline constexpr size_t kStructuredHeaderSize = 20;
inline constexpr uint32_t kMaxPayload = 32u << 20;  // largest READ/WRITE accepted
inline constexpr uint32_t kMaxStringLength = 4096;  // names, descriptions, queries

inline uint16_t load16(const std::byte* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return be16toh(v);
}
inline uint32_t load32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return be32toh(v);
}
inline uint64_t load64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return be64toh(v);
}
inline std::byte* store16(std::byte* p, uint16_t v) {
  v = htobe16(v);
  std::memcpy(p, &v, 2);
  return p + 2;
}
inline std::byte* store32(std::byte* p, uint32_t v) {
  v = htobe32(v);
  std::memcpy(p, &v, 4);
  return p + 4;
}
inline std::byte* store64(std::byte* p, uint64_t v) {
  v = htobe64(v);
  std::memcpy(p, &v, 8);
  return p + 8;
}

}  // namespace kiln::nbd
