#include "qcow2/luks.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>

#include "kiln/common/error.h"
#include "qcow2/format.h"

namespace kiln::block::qcow2 {
namespace {

constexpr uint8_t kLuksMagic[6] = {'L', 'U', 'K', 'S', 0xba, 0xbe};

std::string fixed_string(const std::byte* p, size_t size) {
  const char* text = reinterpret_cast<const char*>(p);
  return std::string(text, strnlen(text, size));
}

void put_string(std::byte* p, size_t size, const std::string& text) {
  std::memcpy(p, text.data(), std::min(size - 1, text.size()));
}

const EVP_MD* digest_by_name(const std::string& name, const std::string& filename) {
  const EVP_MD* md = EVP_get_digestbyname(name.c_str());
  if (md == nullptr) throw Error(ENOTSUP, fmt::format("'{}': unsupported LUKS hash algorithm '{}'", filename, name));
  return md;
}

std::vector<uint8_t> pbkdf2(const std::string& password, const std::vector<uint8_t>& salt, uint32_t iterations, const EVP_MD* md,
                            size_t length) {
  std::vector<uint8_t> out(length);
  if (PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), salt.data(), static_cast<int>(salt.size()),
                        static_cast<int>(iterations), md, static_cast<int>(length), out.data()) != 1) {
    throw Error(EIO, "PBKDF2 failed");
  }
  return out;
}

// The anti-forensic diffusion: each digest-sized chunk i becomes H(be32(i) || chunk).
void diffuse(std::vector<uint8_t>& block, const EVP_MD* md) {
  const size_t digest = static_cast<size_t>(EVP_MD_size(md));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  uint8_t hash[EVP_MAX_MD_SIZE];
  for (size_t i = 0, pos = 0; pos < block.size(); ++i, pos += digest) {
    const size_t chunk = std::min(digest, block.size() - pos);
    uint8_t counter[4] = {uint8_t(i >> 24), uint8_t(i >> 16), uint8_t(i >> 8), uint8_t(i)};
    EVP_DigestInit_ex(ctx.get(), md, nullptr);
    EVP_DigestUpdate(ctx.get(), counter, 4);
    EVP_DigestUpdate(ctx.get(), block.data() + pos, chunk);
    EVP_DigestFinal_ex(ctx.get(), hash, nullptr);
    std::memcpy(block.data() + pos, hash, chunk);
  }
}

std::vector<uint8_t> af_merge(std::span<const std::byte> material, size_t key_bytes, uint32_t stripes, const EVP_MD* md) {
  std::vector<uint8_t> d(key_bytes, 0);
  for (uint32_t i = 0; i < stripes; ++i) {
    const std::byte* stripe = material.data() + size_t(i) * key_bytes;
    for (size_t j = 0; j < key_bytes; ++j) d[j] ^= std::to_integer<uint8_t>(stripe[j]);
    if (i + 1 < stripes) diffuse(d, md);
  }
  return d;
}

std::vector<std::byte> af_split(const std::vector<uint8_t>& key, uint32_t stripes, const EVP_MD* md) {
  std::vector<std::byte> material(size_t(stripes) * key.size());
  if (RAND_bytes(reinterpret_cast<unsigned char*>(material.data()), static_cast<int>(material.size() - key.size())) != 1) {
    throw Error(EIO, "Could not generate random data");
  }
  std::vector<uint8_t> d(key.size(), 0);
  for (uint32_t i = 0; i + 1 < stripes; ++i) {
    const std::byte* stripe = material.data() + size_t(i) * key.size();
    for (size_t j = 0; j < key.size(); ++j) d[j] ^= std::to_integer<uint8_t>(stripe[j]);
    diffuse(d, md);
  }
  std::byte* last = material.data() + size_t(stripes - 1) * key.size();
  for (size_t j = 0; j < key.size(); ++j) last[j] = std::byte(d[j] ^ key[j]);
  return material;
}

std::vector<uint8_t> random_bytes(size_t n) {
  std::vector<uint8_t> out(n);
  if (RAND_bytes(out.data(), static_cast<int>(n)) != 1) throw Error(EIO, "Could not generate random data");
  return out;
}

uint32_t round_up32(uint32_t value, uint32_t alignment) { return (value + alignment - 1) / alignment * alignment; }

}  // namespace

LuksHeader LuksHeader::parse(std::span<const std::byte> raw, const std::string& filename) {
  auto fail = [&](const std::string& what) { return Error(EINVAL, fmt::format("Could not open '{}': LUKS header: {}", filename, what)); };
  if (raw.size() < kLuksHeaderBytes || std::memcmp(raw.data(), kLuksMagic, 6) != 0) throw fail("bad magic");
  const std::byte* p = raw.data();
  if (load_be16(p + 6) != 1) throw fail(fmt::format("unsupported version {}", load_be16(p + 6)));
  LuksHeader h;
  h.cipher_name = fixed_string(p + 8, 32);
  h.cipher_mode = fixed_string(p + 40, 32);
  h.hash = fixed_string(p + 72, 32);
  h.payload_offset = load_be32(p + 104);
  h.key_bytes = load_be32(p + 108);
  h.mk_digest.assign(reinterpret_cast<const uint8_t*>(p + 112), reinterpret_cast<const uint8_t*>(p + 132));
  h.mk_salt.assign(reinterpret_cast<const uint8_t*>(p + 132), reinterpret_cast<const uint8_t*>(p + 164));
  h.mk_iterations = load_be32(p + 164);
  h.uuid = fixed_string(p + 168, 40);
  if (h.key_bytes == 0 || h.key_bytes > 256) throw fail(fmt::format("invalid key size {}", h.key_bytes));
  for (int i = 0; i < 8; ++i) {
    const std::byte* s = p + 208 + 48 * i;
    LuksKeySlot& slot = h.slots[i];
    slot.active = load_be32(s);
    slot.iterations = load_be32(s + 4);
    slot.salt.assign(reinterpret_cast<const uint8_t*>(s + 8), reinterpret_cast<const uint8_t*>(s + 40));
    slot.key_offset = load_be32(s + 40);
    slot.stripes = load_be32(s + 44);
    if (slot.active == kLuksSlotActive && (slot.stripes == 0 || slot.stripes > 65536)) throw fail(fmt::format("slot {} has {} stripes", i, slot.stripes));
  }
  return h;
}

std::vector<std::byte> LuksHeader::encode() const {
  std::vector<std::byte> out(kLuksHeaderBytes);
  std::byte* p = out.data();
  std::memcpy(p, kLuksMagic, 6);
  store_be16(p + 6, 1);
  put_string(p + 8, 32, cipher_name);
  put_string(p + 40, 32, cipher_mode);
  put_string(p + 72, 32, hash);
  store_be32(p + 104, payload_offset);
  store_be32(p + 108, key_bytes);
  std::memcpy(p + 112, mk_digest.data(), 20);
  std::memcpy(p + 132, mk_salt.data(), 32);
  store_be32(p + 164, mk_iterations);
  put_string(p + 168, 40, uuid);
  for (int i = 0; i < 8; ++i) {
    std::byte* s = p + 208 + 48 * i;
    store_be32(s, slots[i].active);
    store_be32(s + 4, slots[i].iterations);
    std::memcpy(s + 8, slots[i].salt.data(), 32);
    store_be32(s + 40, slots[i].key_offset);
    store_be32(s + 44, slots[i].stripes);
  }
  return out;
}

nlohmann::json LuksHeader::info() const {
  nlohmann::json slot_list = nlohmann::json::array();
  for (const LuksKeySlot& s : slots) {
    nlohmann::json slot = {{"active", s.active == kLuksSlotActive}, {"key-offset", uint64_t(s.key_offset) * 512}};
    if (s.active == kLuksSlotActive) {
      slot["iters"] = s.iterations;
      slot["stripes"] = s.stripes;
    }
    slot_list.push_back(slot);
  }
  const std::string mode = cipher_mode.substr(0, cipher_mode.find('-'));
  const std::string ivgen = cipher_mode.find('-') == std::string::npos ? "" : cipher_mode.substr(cipher_mode.find('-') + 1);
  const uint32_t cipher_key_bits = (mode == "xts" ? key_bytes / 2 : key_bytes) * 8;
  return {{"format", "luks"},
          {"cipher-alg", fmt::format("{}-{}", cipher_name, cipher_key_bits)},
          {"cipher-mode", mode},
          {"ivgen-alg", ivgen},
          {"hash-alg", hash},
          {"uuid", uuid},
          {"payload-offset", uint64_t(payload_offset) * 512},
          {"master-key-iters", mk_iterations},
          {"slots", slot_list}};
}

SectorCipher::SectorCipher(std::vector<uint8_t> key) : key_(std::move(key)) {}

void SectorCipher::run(uint64_t first_sector, std::span<std::byte> data, bool encrypting) const {
  const EVP_CIPHER* cipher = key_.size() == 64 ? EVP_aes_256_xts() : EVP_aes_128_xts();
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(), EVP_CIPHER_CTX_free);
  if (!ctx || EVP_CipherInit_ex(ctx.get(), cipher, nullptr, key_.data(), nullptr, encrypting ? 1 : 0) != 1) {
    throw Error(EIO, "Could not set up the LUKS cipher");
  }
  uint8_t iv[16];
  for (size_t pos = 0; pos < data.size(); pos += 512) {
    const uint64_t sector = first_sector + pos / 512;  // plain64: little-endian sector number
    std::memset(iv, 0, sizeof iv);
    for (int i = 0; i < 8; ++i) iv[i] = static_cast<uint8_t>(sector >> (8 * i));
    const int length = static_cast<int>(std::min<size_t>(512, data.size() - pos));
    int produced = 0;
    auto* bytes = reinterpret_cast<unsigned char*>(data.data() + pos);
    if (EVP_CipherInit_ex(ctx.get(), nullptr, nullptr, nullptr, iv, -1) != 1 ||
        EVP_CipherUpdate(ctx.get(), bytes, &produced, bytes, length) != 1) {
      throw Error(EIO, "LUKS sector encryption failed");
    }
  }
}

void SectorCipher::encrypt(uint64_t first_sector, std::span<std::byte> data) const { run(first_sector, data, true); }
void SectorCipher::decrypt(uint64_t first_sector, std::span<std::byte> data) const { run(first_sector, data, false); }

std::vector<uint8_t> luks_unlock(const LuksHeader& header, const std::string& passphrase,
                                 const std::function<void(uint64_t, std::span<std::byte>)>& read, const std::string& filename) {
  if (header.cipher_name != "aes" || (header.cipher_mode != "xts-plain64" && header.cipher_mode != "xts-plain") ||
      (header.key_bytes != 32 && header.key_bytes != 64)) {
    throw Error(ENOTSUP, fmt::format("Could not open '{}': unsupported LUKS cipher {}-{} ({} key bytes); kiln supports aes-xts-plain64",
                                     filename, header.cipher_name, header.cipher_mode, header.key_bytes));
  }
  const EVP_MD* md = digest_by_name(header.hash, filename);
  for (const LuksKeySlot& slot : header.slots) {
    if (slot.active != kLuksSlotActive) continue;
    std::vector<uint8_t> slot_key = pbkdf2(passphrase, slot.salt, slot.iterations, md, header.key_bytes);
    std::vector<std::byte> material(size_t(slot.stripes) * header.key_bytes);
    read(uint64_t(slot.key_offset) * 512, material);
    SectorCipher(slot_key).decrypt(0, material);
    std::vector<uint8_t> master = af_merge(material, header.key_bytes, slot.stripes, md);
    std::string master_text(reinterpret_cast<const char*>(master.data()), master.size());
    if (pbkdf2(master_text, header.mk_salt, header.mk_iterations, md, 20) == header.mk_digest) return master;
  }
  throw Error(EPERM, fmt::format("Could not open '{}': Invalid password, cannot unlock any keyslot", filename));
}

namespace {
constexpr uint32_t kStripes = 4000;

uint32_t xts_key_bytes(const std::string& cipher_alg) {
  if (cipher_alg == "aes-256") return 64;
  if (cipher_alg == "aes-128") return 32;
  throw Error(ENOTSUP, fmt::format("LUKS cipher algorithm '{}' is not supported by kiln (aes-128, aes-256)", cipher_alg));
}

// Key material of each slot, in sectors, aligned to 4 KiB as LUKS does.
uint32_t material_sectors(uint32_t key_bytes) { return round_up32((kStripes * key_bytes + 511) / 512, 8); }
}  // namespace

uint64_t luks_header_region_bytes(const LuksCreateParams& params) {
  return (4096 / 512 + 8 * uint64_t(material_sectors(xts_key_bytes(params.cipher_alg)))) * 512;
}

LuksRegion luks_create(const LuksCreateParams& params) {
  const uint32_t key_bytes = xts_key_bytes(params.cipher_alg);
  if (params.cipher_mode != "xts") throw Error(ENOTSUP, fmt::format("LUKS cipher mode '{}' is not supported by kiln (xts)", params.cipher_mode));
  if (params.ivgen_alg != "plain64") throw Error(ENOTSUP, fmt::format("LUKS IV generator '{}' is not supported by kiln (plain64)", params.ivgen_alg));
  const EVP_MD* md = digest_by_name(params.hash_alg, "new image");

  // Iterations from a short benchmark, so unlocking takes about iter-time.
  const std::vector<uint8_t> probe_salt = random_bytes(32);
  const uint32_t probe_iterations = 10000;
  const auto start = std::chrono::steady_clock::now();
  pbkdf2("benchmark", probe_salt, probe_iterations, md, key_bytes);
  const double ms = std::max(0.01, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  const double per_ms = probe_iterations / ms;
  const uint32_t slot_iterations = static_cast<uint32_t>(std::clamp(per_ms * double(params.iter_time_ms), 1000.0, 4e9));
  const uint32_t mk_iterations = std::max<uint32_t>(1000, slot_iterations / 8);

  LuksHeader h;
  h.cipher_name = "aes";
  h.cipher_mode = "xts-plain64";
  h.hash = params.hash_alg;
  h.key_bytes = key_bytes;
  const std::vector<uint8_t> master = random_bytes(key_bytes);
  h.mk_salt = random_bytes(32);
  h.mk_iterations = mk_iterations;
  h.mk_digest = pbkdf2(std::string(reinterpret_cast<const char*>(master.data()), master.size()), h.mk_salt, mk_iterations, md, 20);
  const std::vector<uint8_t> u = random_bytes(16);
  h.uuid = fmt::format("{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-4{:x}{:02x}-{:x}{:x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}", u[0], u[1], u[2],
                       u[3], u[4], u[5], u[6] & 0xf, u[7], 8 | (u[8] & 3), u[8] >> 4, u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
  const uint32_t stripes = kStripes;
  uint32_t offset = 4096 / 512;
  for (LuksKeySlot& slot : h.slots) {
    slot.key_offset = offset;
    slot.stripes = stripes;
    offset += material_sectors(key_bytes);
  }
  h.payload_offset = offset;

  LuksKeySlot& slot = h.slots[0];
  slot.active = kLuksSlotActive;
  slot.iterations = slot_iterations;
  slot.salt = random_bytes(32);
  std::vector<uint8_t> slot_key = pbkdf2(params.passphrase, slot.salt, slot_iterations, md, key_bytes);
  std::vector<std::byte> material = af_split(master, stripes, md);
  SectorCipher(slot_key).encrypt(0, material);

  LuksRegion region;
  region.bytes.resize(uint64_t(h.payload_offset) * 512);
  std::vector<std::byte> header = h.encode();
  std::copy(header.begin(), header.end(), region.bytes.begin());
  std::copy(material.begin(), material.end(), region.bytes.begin() + uint64_t(slot.key_offset) * 512);
  region.master_key = master;
  return region;
}

}  // namespace kiln::block::qcow2
