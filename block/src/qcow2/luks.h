// LUKS1 header handling and sector encryption (OpenSSL) for qcow2's
// encrypt.format=luks: the LUKS header and key material live in clusters of
// the image (full disk encryption header extension); guest data is encrypted
// per 512-byte sector with the host offset as tweak (aes-xts-plain64).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kiln::block::qcow2 {

inline constexpr size_t kLuksHeaderBytes = 592;
inline constexpr uint32_t kLuksSlotActive = 0x00AC71F3;
inline constexpr uint32_t kLuksSlotInactive = 0x0000DEAD;

struct LuksKeySlot {
  uint32_t active = kLuksSlotInactive;
  uint32_t iterations = 0;
  std::vector<uint8_t> salt = std::vector<uint8_t>(32);
  uint32_t key_offset = 0;  // sectors from the start of the LUKS header
  uint32_t stripes = 0;
};

struct LuksHeader {
  std::string cipher_name = "aes";
  std::string cipher_mode = "xts-plain64";
  std::string hash = "sha256";
  uint32_t payload_offset = 0;  // sectors
  uint32_t key_bytes = 64;
  std::vector<uint8_t> mk_digest = std::vector<uint8_t>(20);
  std::vector<uint8_t> mk_salt = std::vector<uint8_t>(32);
  uint32_t mk_iterations = 0;
  std::string uuid;
  LuksKeySlot slots[8];

  static LuksHeader parse(std::span<const std::byte> raw, const std::string& filename);
  std::vector<std::byte> encode() const;
  // qemu-img info's "encrypt" object.
  nlohmann::json info() const;
};

// aes-xts-plain64 over 512-byte sectors with a fixed master key.
class SectorCipher {
 public:
  SectorCipher() = default;
  explicit SectorCipher(std::vector<uint8_t> key);
  // `data` starts at sector `first_sector`; its length is a multiple of 512
  // (the last sector may be shorter, down to 16 bytes, for key material).
  void encrypt(uint64_t first_sector, std::span<std::byte> data) const;
  void decrypt(uint64_t first_sector, std::span<std::byte> data) const;
  bool valid() const { return !key_.empty(); }

 private:
  void run(uint64_t first_sector, std::span<std::byte> data, bool encrypting) const;
  std::vector<uint8_t> key_;
};

// Recovers the master key from the header and key material with `passphrase`
// (`read` reads bytes at an offset relative to the LUKS header). Throws a
// kiln::Error naming `filename` when no slot opens.
std::vector<uint8_t> luks_unlock(const LuksHeader& header, const std::string& passphrase,
                                 const std::function<void(uint64_t, std::span<std::byte>)>& read, const std::string& filename);

struct LuksCreateParams {
  std::string passphrase;
  std::string cipher_alg = "aes-256";
  std::string cipher_mode = "xts";
  std::string ivgen_alg = "plain64";
  std::string hash_alg = "sha256";
  uint64_t iter_time_ms = 2000;
};

// A new LUKS header region (header + key material, payload_offset sectors
// long) and its master key.
struct LuksRegion {
  std::vector<std::byte> bytes;
  std::vector<uint8_t> master_key;
};
LuksRegion luks_create(const LuksCreateParams& params);
// Bytes of that region (qemu-img measure counts them), without creating it.
uint64_t luks_header_region_bytes(const LuksCreateParams& params);

}  // namespace kiln::block::qcow2
