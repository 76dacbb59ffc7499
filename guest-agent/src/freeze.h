// guest-fsfreeze-*: FIFREEZE/FITHAW on the mounted file systems, the hook
// script around them, and the frozen state that blocks most commands.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kiln/ga/agent.h"

namespace kiln::ga {

class FreezeState {
 public:
  explicit FreezeState(const AgentConfig& config);
  ~FreezeState();

  bool frozen() const { return frozen_; }
  std::int64_t freeze(const std::optional<std::vector<std::string>>& mountpoints);
  std::int64_t thaw();
  void thaw_all_quietly();

 private:
  const AgentConfig& config_;
  bool frozen_ = false;
  std::vector<std::string> frozen_paths_;
};

}  // namespace kiln::ga
