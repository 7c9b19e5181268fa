# Turns kernel sources into C arrays so the library never reads a source path at run time, and
# emits their table in the order given (the order in which the program compiles them):
#   const efl_kernel_source efl_kernel_sources[] = {{"efl_labels.h", text, length}, ...};
#   const size_t efl_kernel_source_count;
# (lib/internal.h declares them). So a kernel file is added in one place: the CMake list.
# cmake -DOUT=file.c -DSOURCES="path1;path2;..." -P embed.cmake
set(body "/* Generated from kernels/ by cmake/embed.cmake. Do not edit. */\n#include \"internal.h\"\n")
set(table "")
set(count 0)
foreach(path IN LISTS SOURCES)
  get_filename_component(name "${path}" NAME)
  file(READ "${path}" hex HEX)
  string(LENGTH "${hex}" hexlen)
  math(EXPR len "${hexlen} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
  string(APPEND body "static const char efl_src_${count}[] = {\n${bytes}0x00};\n")
  string(APPEND table "    {\"${name}\", efl_src_${count}, ${len}},\n")
  math(EXPR count "${count} + 1")
endforeach()
string(APPEND body "const efl_kernel_source efl_kernel_sources[] = {\n${table}};\n"
                   "const size_t efl_kernel_source_count = ${count};\n")
file(WRITE "${OUT}.tmp" "${body}")
# (copy_if_different rather than file(COPY_FILE), which needs CMake 3.21)
execute_process(COMMAND "${CMAKE_COMMAND}" -E copy_if_different "${OUT}.tmp" "${OUT}")
file(REMOVE "${OUT}.tmp")
