// VDI consistency check (qemu-img check's findings and wording) and repair of
// the block map: out-of-range entries are dropped, shared data blocks get a
// copy each, and the data area is compacted so that the allocated-block count
// in the header covers exactly the blocks in use.
#include <algorithm>

#include "kiln/common/buffer.h"
#include "kiln/common/error.h"
#include "vdi/node.h"

namespace kiln::block::vdi {

VdiNode::Scan VdiNode::scan_block_map() const {
  Scan scan;
  const uint32_t blocks = header_.blocks_in_image;
  std::vector<bool> used(blocks, false);
  std::vector<uint32_t> beyond;
  for (uint32_t block = 0; block < bmap_.size(); ++block) {
    const uint32_t entry = bmap_[block];
    if (!is_allocated(entry)) continue;
    if (entry >= blocks) {
      scan.messages.push_back(fmt::format("ERROR: block index {} too large, is {}", block, entry));
      ++scan.corruptions;
      scan.out_of_range.push_back(block);
      continue;
    }
    if (used[entry]) {
      // qemu names the shared data block twice.
      scan.messages.push_back(fmt::format("ERROR: block index {} also used by {}", entry, entry));
      ++scan.corruptions;
      scan.duplicates.push_back(block);
    } else {
      used[entry] = true;
      if (entry >= header_.blocks_allocated) beyond.push_back(block);
    }
    ++scan.counted;
  }
  if (scan.counted == header_.blocks_allocated) {
    // The count agrees yet a data block lies past it (a gap below): writers
    // would hand that data block out again. qemu does not look for this.
    for (uint32_t block : beyond) {
      scan.messages.push_back(
          fmt::format("ERROR: block {} uses data block {} beyond the {} allocated blocks", block, bmap_[block], header_.blocks_allocated));
      ++scan.corruptions;
    }
  } else {
    scan.messages.push_back(fmt::format("ERROR: allocated blocks mismatch, is {}, should be {}", scan.counted, header_.blocks_allocated));
    ++scan.corruptions;
  }
  return scan;
}

void VdiNode::compact_data_area(std::span<std::byte> buffer) {
  const uint32_t blocks = header_.blocks_in_image;
  std::vector<bool> used(blocks, false);
  uint32_t in_use = 0;
  uint32_t end = 0;
  for (uint32_t entry : bmap_) {
    if (!is_allocated(entry) || entry >= blocks || used[entry]) continue;
    used[entry] = true;
    ++in_use;
    end = std::max(end, entry + 1);
  }
  // Data blocks at or past `in_use` move into the holes below it.
  std::vector<uint32_t> new_index(end > in_use ? end - in_use : 0, kBlockFree);
  uint32_t hole = 0;
  for (uint32_t index = in_use; index < end; ++index) {
    if (!used[index]) continue;
    while (used[hole]) ++hole;
    copy_data_block(index, hole, buffer);
    used[hole] = true;
    new_index[index - in_use] = hole;
  }
  if (!new_index.empty()) {
    file_->flush();
    for (uint32_t& entry : bmap_) {
      if (is_allocated(entry) && entry < blocks && entry >= in_use) entry = new_index[entry - in_use];
    }
  }
  header_.blocks_allocated = in_use;
}

CheckResult VdiNode::check(CheckRepair repair) {
  std::unique_lock layout(layout_);
  std::lock_guard lock(meta_);
  const Scan found = scan_block_map();
  CheckResult result;
  result.messages = found.messages;
  result.corruptions = found.corruptions;
  if (repair == CheckRepair::None || found.corruptions == 0) return result;
  if (read_only_) throw Error(EACCES, fmt::format("'{}' is opened read-only", filename()));

  AlignedBuffer buffer(header_.block_stride());
  if (repair == CheckRepair::All) {
    // Entries pointing outside the data area hold nothing recoverable.
    for (uint32_t block : found.out_of_range) bmap_[block] = kBlockFree;
  }
  compact_data_area(buffer.span());
  if (repair == CheckRepair::All) {
    // Each further user of a shared data block gets its own copy, appended.
    for (uint32_t block : found.duplicates) {
      const uint32_t index = header_.blocks_allocated;
      if (index >= header_.blocks_in_image) break;  // cannot happen: every copy has an entry of its own
      copy_data_block(bmap_[block], index, buffer.span());
      bmap_[block] = index;
      header_.blocks_allocated = index + 1;
    }
  }
  file_->flush();
  write_map_range(0, header_.blocks_in_image);
  write_header();
  const uint64_t end = header_.offset_data + uint64_t{header_.blocks_allocated} * header_.block_stride();
  if (file_->size() > end) file_->truncate(end, Preallocation::Off, true);
  file_->flush();
  rebuild_allocation_state();

  const Scan after = scan_block_map();
  result.corruptions = after.corruptions;
  result.corruptions_fixed = found.corruptions > after.corruptions ? found.corruptions - after.corruptions : 0;
  return result;
}

}  // namespace kiln::block::vdi
