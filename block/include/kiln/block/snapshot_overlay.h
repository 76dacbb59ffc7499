// A throw-away copy-on-write overlay over any node (qemu's -snapshot / -s):
// writes land in an unlinked temporary file at cluster granularity, reads
// come from the overlay where a cluster was written and from the base
// elsewhere. The base is only read. Used by kiln-io -s and kiln-nbd -s.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kiln/block/image.h"
#include "kiln/block/node.h"

namespace kiln::block {

struct SnapshotOverlayOptions {
  // Copy-on-write granularity; a power of two, at least 512.
  uint32_t cluster_size = 64 * 1024;
  // Folder for the temporary file; empty: $TMPDIR, else /var/tmp.
  std::string temp_dir;
  // Refuse writes (an overlay of a read-only view).
  bool read_only = false;
};

// Overlay over `base`, which must outlive the returned node. The overlay's
// block_status reports overlay clusters as allocated (data or zero) and base
// ranges as unallocated; backing_child() is `base`.
std::unique_ptr<Node> create_snapshot_overlay(Node& base, const SnapshotOverlayOptions& options = {});

// Overlay that owns the image it covers (closed with the overlay).
std::unique_ptr<Node> create_snapshot_overlay(std::unique_ptr<Image> base, const SnapshotOverlayOptions& options = {});

}  // namespace kiln::block
