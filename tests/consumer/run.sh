#!/usr/bin/env bash
# Usage: run.sh BUILD_DIR SOURCE_DIR
# Installs the built efl into a prefix inside BUILD_DIR, then builds and runs tests/consumer
# against it twice: through find_package(efl) and through pkg-config (efl.pc).
# Exit 77: no OpenCL device (the consumer's own skip code).
set -eu
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
work=$build/consumer-package
prefix=$work/prefix
rm -rf "$work" # a previous install must not stand in for this one
mkdir -p "$work"

cmake --install "$build" --prefix "$prefix"

# find_package: the consumer sees only the prefix, never the efl build tree.
cmake -S "$src/tests/consumer" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" \
      -DCMAKE_BUILD_TYPE=Release
cmake --build "$work/cmake-build"
"$work/cmake-build/consumer"
"$work/cmake-build/consumer_static"
# efl::efl_mpi: built where both efl and this machine have MPI; 2 ranks, as root too (CI)
if [ -x "$work/cmake-build/consumer_mpi" ]; then
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    mpiexec --oversubscribe -n 2 "$work/cmake-build/consumer_mpi"
elif [ -n "$(find "$prefix" -name 'libefl_mpi.so*' | head -n1)" ]; then
  echo "efl_mpi is installed but the consumer could not use efl::efl_mpi" >&2
  exit 1
fi

# pkg-config: the .pc file alone gives the compile and link flags.
pcdir=$(dirname "$(find "$prefix" -name efl.pc -path '*/pkgconfig/*' | head -n1)")
[ -f "$pcdir/efl.pc" ] || { echo "efl.pc not installed" >&2; exit 1; }
export PKG_CONFIG_PATH=$pcdir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
pkg-config --validate efl
libdir=$(pkg-config --variable=libdir efl)
# shellcheck disable=SC2046 # the flags are meant to split
${CC:-cc} -std=c11 -Wall -Wextra -o "$work/consumer-pc" "$src/tests/consumer/consumer.c" \
    $(pkg-config --cflags --libs efl)
LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$work/consumer-pc"
# and the static library: in a prefix that holds libefl.a but no libefl.so (what a static-only
# install looks like), `pkg-config --static` alone must link it, Libs.private and Requires giving
# everything libefl.a needs, and the binary must not ask for libefl.so at run time.
static_prefix=$work/static-prefix
cp -a "$prefix" "$static_prefix"
find "$static_prefix" -name 'libefl.so*' -delete
export PKG_CONFIG_PATH=$static_prefix/${pcdir#"$prefix"/}${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
[ "$(pkg-config --variable=libdir efl)" = "$static_prefix/${libdir#"$prefix"/}" ] ||
  { echo "efl.pc does not follow its prefix: $(pkg-config --variable=libdir efl)" >&2; exit 1; }
# shellcheck disable=SC2046
${CC:-cc} -std=c11 -Wall -Wextra -o "$work/consumer-pc-static" "$src/tests/consumer/consumer.c" \
    $(pkg-config --static --cflags --libs efl)
if readelf -d "$work/consumer-pc-static" | grep -q 'NEEDED.*libefl'; then
  echo "the pkg-config --static consumer still needs libefl.so:" >&2
  readelf -d "$work/consumer-pc-static" | grep NEEDED >&2
  exit 1
fi
"$work/consumer-pc-static"

# efl_mpi.h comes with libefl_mpi and only with it: a header whose library is missing would compile
# and then fail to link.
has_lib=$([ -n "$(find "$prefix" -name 'libefl_mpi.so*' | head -n1)" ] && echo yes || echo no)
has_hdr=$([ -f "$prefix/include/efl/efl_mpi.h" ] && echo yes || echo no)
if [ "$has_lib" != "$has_hdr" ]; then
  echo "libefl_mpi installed: $has_lib, efl_mpi.h installed: $has_hdr" >&2
  exit 1
fi
