#include "vmdk/descriptor.h"

#include <algorithm>
#include <cctype>
#include <charconv>

#include <fmt/format.h>

#include "kiln/common/error.h"

namespace kiln::block::vmdk {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y)); });
}

// A line fit for a one-line error: printable, shortened.
std::string quote_line(std::string_view line) {
  std::string out;
  for (char c : line.substr(0, 80)) out += std::isprint(static_cast<unsigned char>(c)) ? c : '?';
  if (line.size() > 80) out += "...";
  return out;
}

std::optional<uint64_t> parse_decimal(std::string_view text) {
  uint64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value, 10);
  if (error != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

std::optional<uint32_t> parse_hex32(std::string_view text) {
  uint32_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value, 16);
  if (error != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

std::optional<ExtentType> parse_extent_type(std::string_view name) {
  static constexpr std::pair<std::string_view, ExtentType> kTypes[] = {
      {"FLAT", ExtentType::Flat},         {"SPARSE", ExtentType::Sparse},   {"ZERO", ExtentType::Zero},
      {"VMFS", ExtentType::Vmfs},         {"VMFSSPARSE", ExtentType::VmfsSparse}, {"VMFSRDM", ExtentType::VmfsRdm},
      {"VMFSRAW", ExtentType::VmfsRaw},   {"SESPARSE", ExtentType::SeSparse},
  };
  for (const auto& [text, type] : kTypes) {
    if (text == name) return type;
  }
  return std::nullopt;
}

// Splits "word word ..." at blanks, taking one "quoted string" as one token
// (quotes kept so the caller knows it was quoted).
std::vector<std::string_view> tokenize(std::string_view line, bool& unterminated) {
  std::vector<std::string_view> tokens;
  size_t i = 0;
  unterminated = false;
  while (i < line.size()) {
    if (line[i] == ' ' || line[i] == '\t') {
      ++i;
      continue;
    }
    size_t start = i;
    if (line[i] == '"') {
      size_t close = line.find('"', i + 1);
      if (close == std::string_view::npos) {
        unterminated = true;
        return tokens;
      }
      i = close + 1;
    } else {
      while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    }
    tokens.push_back(line.substr(start, i - start));
  }
  return tokens;
}

ExtentLine parse_extent_line(std::string_view line, std::string_view name) {
  auto invalid = [&](std::string_view why) {
    return invalid_argument("Invalid extent line in VMDK descriptor '{}' ({}): '{}'", name, why, quote_line(line));
  };
  bool unterminated = false;
  std::vector<std::string_view> tokens = tokenize(line, unterminated);
  if (unterminated) throw invalid("unterminated quote");
  if (tokens.size() < 3) throw invalid("expected ACCESS SECTORS TYPE \"FILE\" [OFFSET]");
  ExtentLine extent;
  if (tokens[0] == "RW") {
    extent.access = ExtentAccess::ReadWrite;
  } else if (tokens[0] == "RDONLY") {
    extent.access = ExtentAccess::ReadOnly;
  } else {
    extent.access = ExtentAccess::NoAccess;
  }
  auto sectors = parse_decimal(tokens[1]);
  if (!sectors) throw invalid("bad sector count");
  if (*sectors > kMaxTotalSectors) throw invalid("extent too large");
  extent.sectors = *sectors;
  auto type = parse_extent_type(tokens[2]);
  if (!type) throw invalid("unknown extent type");
  extent.type = *type;
  extent.type_name = std::string(tokens[2]);
  if (extent.type == ExtentType::Zero) {
    if (tokens.size() > 4) throw invalid("too many fields");
    if (tokens.size() >= 4) {
      if (tokens[3].size() < 2 || tokens[3].front() != '"') throw invalid("file name must be quoted");
      extent.filename = std::string(tokens[3].substr(1, tokens[3].size() - 2));
    }
    return extent;
  }
  if (tokens.size() < 4) throw invalid("missing file name");
  if (tokens[3].size() < 2 || tokens[3].front() != '"') throw invalid("file name must be quoted");
  extent.filename = std::string(tokens[3].substr(1, tokens[3].size() - 2));
  if (extent.filename.empty()) throw invalid("empty file name");
  if (extent.type == ExtentType::Flat) {
    if (tokens.size() != 5) throw invalid("FLAT extents need an offset");
    auto offset = parse_decimal(tokens[4]);
    if (!offset || *offset > kMaxTotalSectors) throw invalid("bad offset");
    extent.offset = *offset;
  } else if (tokens.size() != 4) {
    throw invalid("only FLAT extents take an offset");
  }
  return extent;
}

}  // namespace

const std::string* Descriptor::ddb_value(std::string_view key) const {
  for (const auto& [name, value] : ddb) {
    if (iequals(name, key)) return &value;
  }
  return nullptr;
}

bool looks_like_descriptor(std::span<const std::byte> head) {
  std::string_view text(reinterpret_cast<const char*>(head.data()), head.size());
  size_t pos = 0;
  while (pos < text.size()) {
    if (text[pos] == '#') {
      size_t eol = text.find('\n', pos);
      if (eol == std::string_view::npos) return false;
      pos = eol + 1;
    } else if (text[pos] == '\n') {
      ++pos;
    } else if (text[pos] == '\r' && pos + 1 < text.size() && text[pos + 1] == '\n') {
      pos += 2;
    } else {
      std::string_view rest = text.substr(pos);
      if (rest.size() < 9 || rest.substr(0, 8) != "version=" || rest[8] < '1' || rest[8] > '3') return false;
      rest.remove_prefix(9);
      return rest.starts_with("\n") || rest.starts_with("\r\n");
    }
  }
  return false;
}

Descriptor parse_descriptor(std::string_view text, std::string_view name) {
  if (text.size() > kMaxDescriptorBytes) throw invalid_argument("VMDK descriptor '{}' is too large ({} bytes)", name, text.size());
  // Embedded descriptors are padded with NULs.
  if (size_t nul = text.find('\0'); nul != std::string_view::npos) text = text.substr(0, nul);
  Descriptor d;
  bool have_version = false;
  bool have_create_type = false;
  uint64_t total_sectors = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = trim(text.substr(pos, eol - pos));
    pos = eol + 1;
    if (line.empty() || line.front() == '#') continue;
    if (line.starts_with("RW ") || line.starts_with("RDONLY ") || line.starts_with("NOACCESS ") || line.starts_with("RW\t") ||
        line.starts_with("RDONLY\t") || line.starts_with("NOACCESS\t")) {
      ExtentLine extent = parse_extent_line(line, name);
      total_sectors += extent.sectors;
      if (total_sectors > kMaxTotalSectors) throw invalid_argument("VMDK descriptor '{}': the extents add up to an absurd size", name);
      d.extents.push_back(std::move(extent));
      continue;
    }
    size_t equals = line.find('=');
    if (equals == std::string_view::npos) {
      throw invalid_argument("Invalid line in VMDK descriptor '{}': '{}'", name, quote_line(line));
    }
    std::string_view key = trim(line.substr(0, equals));
    std::string_view value = trim(line.substr(equals + 1));
    if (!value.empty() && value.front() == '"') {
      if (value.size() < 2 || value.back() != '"') {
        throw invalid_argument("Invalid line in VMDK descriptor '{}' (unterminated quote): '{}'", name, quote_line(line));
      }
      value = value.substr(1, value.size() - 2);
    }
    if (iequals(key, "version")) {
      auto version = parse_decimal(value);
      if (!version || *version < 1 || *version > 3) {
        throw invalid_argument("VMDK descriptor '{}': unsupported version '{}'", name, quote_line(value));
      }
      d.version = static_cast<int>(*version);
      have_version = true;
    } else if (iequals(key, "CID") || iequals(key, "parentCID")) {
      auto cid = parse_hex32(value);
      if (!cid) throw invalid_argument("VMDK descriptor '{}': invalid {} '{}'", name, key, quote_line(value));
      (iequals(key, "CID") ? d.cid : d.parent_cid) = *cid;
    } else if (iequals(key, "createType")) {
      d.create_type = std::string(value);
      have_create_type = true;
    } else if (iequals(key, "parentFileNameHint")) {
      d.parent_file_name_hint = std::string(value);
    } else if (key.size() > 4 && iequals(key.substr(0, 4), "ddb.")) {
      d.ddb.emplace_back(std::string(key), std::string(value));
    }
    // Other keys (encoding, isNativeSnapshot, changeTrackPath, ...) carry
    // nothing the block layer needs.
  }
  if (!have_version) throw invalid_argument("VMDK descriptor '{}' has no version line", name);
  if (!have_create_type) throw invalid_argument("VMDK descriptor '{}' has no createType", name);
  return d;
}

std::string resolve_extent_path(const std::string& descriptor_path, const std::string& extent_name, bool allow_outside) {
  if (extent_name.empty()) throw invalid_argument("Could not open '{}': empty extent file name", descriptor_path);
  if (extent_name.front() == '/') {
    if (allow_outside) return extent_name;
    throw Error(EPERM, fmt::format("Could not open '{}': extent file name '{}' is absolute; only names relative to the descriptor's folder "
                                   "are accepted (open with extent-paths=any to allow it)",
                                   descriptor_path, quote_line(extent_name)));
  }
  size_t start = 0;
  while (start <= extent_name.size()) {
    size_t slash = extent_name.find('/', start);
    if (slash == std::string::npos) slash = extent_name.size();
    if (!allow_outside && std::string_view(extent_name).substr(start, slash - start) == "..") {
      throw Error(EPERM, fmt::format("Could not open '{}': extent file name '{}' climbs out of the descriptor's folder (open with "
                                     "extent-paths=any to allow it)",
                                     descriptor_path, quote_line(extent_name)));
    }
    start = slash + 1;
  }
  size_t folder_end = descriptor_path.rfind('/');
  if (folder_end == std::string::npos) return extent_name;
  return descriptor_path.substr(0, folder_end + 1) + extent_name;
}

std::string_view extent_type_name(ExtentType type) {
  switch (type) {
    case ExtentType::Flat: return "FLAT";
    case ExtentType::Sparse: return "SPARSE";
    case ExtentType::Zero: return "ZERO";
    case ExtentType::Vmfs: return "VMFS";
    case ExtentType::VmfsSparse: return "VMFSSPARSE";
    case ExtentType::VmfsRdm: return "VMFSRDM";
    case ExtentType::VmfsRaw: return "VMFSRAW";
    case ExtentType::SeSparse: return "SESPARSE";
  }
  return "";
}

std::string format_descriptor(const DescriptorSettings& s) {
  std::string extents;
  for (const ExtentLine& e : s.extents) {
    const char* access = e.access == ExtentAccess::ReadWrite ? "RW" : e.access == ExtentAccess::ReadOnly ? "RDONLY" : "NOACCESS";
    extents += fmt::format("{} {} {} \"{}\"", access, e.sectors, extent_type_name(e.type), e.filename);
    if (e.type == ExtentType::Flat) extents += fmt::format(" {}", e.offset);
    extents += '\n';
  }
  // As qemu-img: the parent hint line takes the place of the blank line.
  std::string parent = s.parent_file_name_hint.empty() ? "" : fmt::format("parentFileNameHint=\"{}\"", s.parent_file_name_hint);
  return fmt::format(
      "# Disk DescriptorFile\n"
      "version=1\n"
      "CID={:x}\n"
      "parentCID={:x}\n"
      "createType=\"{}\"\n"
      "{}\n"
      "# Extent description\n"
      "{}"
      "\n"
      "# The Disk Data Base\n"
      "#DDB\n"
      "\n"
      "ddb.virtualHWVersion = \"{}\"\n"
      "ddb.geometry.cylinders = \"{}\"\n"
      "ddb.geometry.heads = \"{}\"\n"
      "ddb.geometry.sectors = \"63\"\n"
      "ddb.adapterType = \"{}\"\n"
      "ddb.toolsVersion = \"{}\"\n",
      s.cid, s.parent_cid, s.create_type, parent, extents, s.hw_version, s.cylinders, s.heads, s.adapter_type, s.tools_version);
}

std::string replace_cid(std::string_view text, uint32_t cid) {
  std::string out;
  out.reserve(text.size() + 16);
  bool replaced = false;
  size_t pos = 0;
  size_t after_version = std::string::npos;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    size_t next = eol == std::string_view::npos ? text.size() : eol + 1;
    std::string_view line = text.substr(pos, next - pos);
    std::string_view trimmed = trim(line);
    const size_t equals = trimmed.find('=');
    if (equals != std::string_view::npos && !trimmed.starts_with("#") && iequals(trim(trimmed.substr(0, equals)), "CID")) {
      out += fmt::format("CID={:x}\n", cid);
      replaced = true;
    } else {
      out += line;
      if (after_version == std::string::npos && trimmed.starts_with("version=")) after_version = out.size();
    }
    pos = next;
  }
  if (!replaced) {
    std::string line = fmt::format("CID={:x}\n", cid);
    if (after_version != std::string::npos && out[after_version - 1] != '\n') line.insert(line.begin(), '\n');
    out.insert(after_version == std::string::npos ? 0 : after_version, line);
  }
  return out;
}

}  // namespace kiln::block::vmdk
