// The nbd protocol node: an export on an NBD server, reached through libnbd.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "kiln/block/node.h"
#include "kiln/block/protocol.h"

namespace kiln::block {

// True for nbd://, nbd+unix://, nbds://, nbds+unix:// URIs and qemu's legacy
// "nbd:host:port[:exportname=NAME]" / "nbd:unix:PATH[:exportname=NAME]".
bool is_nbd_filename(const std::string& filename);

// The libnbd URI for an NBD filename (legacy syntax rewritten), or nullopt.
std::optional<std::string> nbd_uri_for(const std::string& filename);

// Connects to the export. Several connections are opened when the server
// advertises multi-conn, so requests from many threads proceed in parallel.
std::unique_ptr<Node> open_nbd(const std::string& filename, const ProtocolOptions& options);

}  // namespace kiln::block
