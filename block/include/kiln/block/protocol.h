// Protocol nodes: where bytes live. `file` now; `nbd` joins with kiln-nbd.
#pragma once

#include <memory>
#include <string>

#include "kiln/block/node.h"
#include "kiln/block/types.h"

namespace kiln::block {

struct ProtocolOptions {
  bool read_only = false;
  CacheMode cache = CacheMode::Writeback;
  bool force_share = false;
  bool locking = true;
  bool create = false;  // create (or truncate) the file
};

// What qemu's tools take and share: readers take consistent-read, writers also
// write and resize; nobody shares write or resize unless reading with
// `share_writes` (raw) or forcing (-U).
LockPermissions default_lock_permissions(bool read_only, bool share_writes, bool force_share);

// Opens the protocol node for `filename` (a path, later also nbd:// URIs).
std::unique_ptr<Node> open_protocol(const std::string& filename, const ProtocolOptions& options);

// qemu's image-locking permissions (bit numbers).
enum class Permission : unsigned { ConsistentRead = 0, Write = 1, WriteUnchanged = 2, Resize = 3 };
inline constexpr unsigned permission_bit(Permission p) { return 1u << static_cast<unsigned>(p); }
inline constexpr unsigned kAllPermissions = 0xf;

// What an opener uses (`take`) and lets others use (`share`), as bit sets.
struct LockPermissions {
  unsigned take = 0;
  unsigned share = kAllPermissions;
};

}  // namespace kiln::block
