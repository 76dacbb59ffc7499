// kiln-img: create, inspect, convert and modify disk images, with qemu-img's
// command line, output and exit codes.
#include <cstdio>
#include <cstring>

#include "kiln/common/log.h"
#include "tool.h"

namespace {

constexpr const char* kProgram = "kiln-img";

void print_error(const char* message) {
  std::fflush(stdout);
  std::fprintf(stderr, "%s: %s\n", kProgram, message);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kiln::img;
  CLI::App app{"kiln-img: create, inspect, convert and modify virtual disk images (qemu-img compatible)", kProgram};
  app.set_version_flag("-V,--version", "kiln-img version 0.1.0 (compatible with qemu-img 7.2)");
  app.require_subcommand(1);
  app.fallthrough(false);
  std::string formats;
  for (const kiln::block::FormatDriver* driver : kiln::block::formats()) formats += " " + std::string(driver->name());
  app.footer("Supported formats:" + formats + "\nSee kiln-img(1) for every command and option.");

  Runner runner;
  register_amend(app, runner);
  register_bench(app, runner);
  register_check(app, runner);
  register_commit(app, runner);
  register_compare(app, runner);
  register_convert(app, runner);
  register_create(app, runner);
  register_dd(app, runner);
  register_info(app, runner);
  register_map(app, runner);
  register_measure(app, runner);
  register_rebase(app, runner);
  register_resize(app, runner);
  register_snapshot(app, runner);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& help) {
    return app.exit(help);
  } catch (const CLI::CallForVersion& version) {
    return app.exit(version);
  } catch (const CLI::CallForAllHelp& help) {
    return app.exit(help);
  } catch (const CLI::ParseError& error) {
    print_error(error.what());
    return 1;
  }

  try {
    return runner ? runner() : 1;
  } catch (const ExitCode& exit) {
    return exit.code;
  } catch (const kiln::Error& error) {
    print_error(error.what());
    return 1;
  } catch (const std::bad_alloc&) {
    print_error("Out of memory");
    return 1;
  }
}
