# What this configuration builds, what it cannot build and why, and what an option turned off;
# included by the top-level CMakeLists.txt, so the functions serve every folder.
#
#   efl_component(NAME CONDITION REASON)
#       CONDITION is an if() condition ("MPI_C_FOUND", "CLBlast_FOUND AND TARGET clblast").
#       True: NAME is listed as built. False: NAME is listed as NOT built, with REASON (what is
#       missing, and how to install it). The caller still decides with its own if().
#   efl_component_off(NAME WHY)
#       NAME is not built because the caller chose so (an option: -DEFL_BUILD_BENCH=OFF, a
#       sanitizer build). Listed, never an error.
#   efl_python_module(VAR MODULE)
#       VAR: whether the tests' Python (/usr/bin/python3) imports MODULE. A success is cached;
#       a failure is looked at again on the next configure.
#   efl_components_summary()
#       Called last: prints the summary ("efl: built: ...", "efl: NOT built: NAME (REASON)"),
#       writes it to <build>/efl-components.txt (scripts/setup.sh shows it again at the end of
#       its run), and under EFL_REQUIRE_ALL stops with a FATAL_ERROR naming every component
#       that could not be built.
#
# EFL_REQUIRE_ALL: AUTO (the default) means ON when the environment variable CI is "true" at
# configure time (CI services set it), OFF otherwise; ON or OFF decides whatever CI says. AUTO
# is looked at on every configure, so a build folder first configured outside CI still fails
# under CI=true. AUTO stays OFF, CI or not, where efl is not the test run's own project: built
# inside another project (add_subdirectory, FetchContent), or with EFL_BUILD_TESTS=OFF (a
# package build such as `pip install .`, whose CI need not have MPI or CLBlast).

set(EFL_REQUIRE_ALL AUTO CACHE STRING
    "Fail the configuration when a component cannot be built: ON, OFF, or AUTO (ON when the environment variable CI is true)")
set_property(CACHE EFL_REQUIRE_ALL PROPERTY STRINGS AUTO ON OFF)

set(EFL_COMPONENTS_PYTHON /usr/bin/python3)

function(efl_component name condition reason)
  cmake_language(EVAL CODE "
    if(${condition})
      set(_efl_component_ok TRUE)
    else()
      set(_efl_component_ok FALSE)
    endif()")
  if(_efl_component_ok)
    set_property(GLOBAL APPEND PROPERTY EFL_COMPONENTS_BUILT "${name}")
  else()
    get_property(missing GLOBAL PROPERTY EFL_COMPONENTS_MISSING)
    if(NOT "${name}" IN_LIST missing)
      set_property(GLOBAL APPEND PROPERTY EFL_COMPONENTS_MISSING "${name}")
      set_property(GLOBAL PROPERTY "EFL_COMPONENT_REASON ${name}" "${reason}")
    endif()
  endif()
endfunction()

function(efl_component_off name why)
  get_property(off GLOBAL PROPERTY EFL_COMPONENTS_OFF)
  if(NOT "${name}" IN_LIST off)
    set_property(GLOBAL APPEND PROPERTY EFL_COMPONENTS_OFF "${name}")
    set_property(GLOBAL PROPERTY "EFL_COMPONENT_REASON ${name}" "${why}")
  endif()
endfunction()

function(efl_python_module var module)
  if(NOT ${var})
    execute_process(COMMAND ${EFL_COMPONENTS_PYTHON} -c "import ${module}"
                    RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET TIMEOUT 120)
    if(rc EQUAL 0)
      set(${var} TRUE CACHE INTERNAL "${EFL_COMPONENTS_PYTHON} imports ${module}")
    else()
      unset(${var} CACHE)
      set(${var} FALSE PARENT_SCOPE)
    endif()
  endif()
endfunction()

function(efl_components_summary)
  string(TOLOWER "$ENV{CI}" ci)
  if(EFL_REQUIRE_ALL STREQUAL "AUTO" OR EFL_REQUIRE_ALL STREQUAL "")
    if(ci STREQUAL "true" AND NOT CMAKE_SOURCE_DIR STREQUAL PROJECT_SOURCE_DIR)
      set(require OFF)
      set(why "AUTO: CI=true, but efl is built inside another project")
    elseif(ci STREQUAL "true" AND DEFINED EFL_BUILD_TESTS AND NOT EFL_BUILD_TESTS)
      set(require OFF)
      set(why "AUTO: CI=true, but EFL_BUILD_TESTS=OFF: a package build")
    elseif(ci STREQUAL "true")
      set(require ON)
      set(why "AUTO: CI=true")
    else()
      set(require OFF)
      set(why "AUTO: CI is not true")
    endif()
  elseif(EFL_REQUIRE_ALL)
    set(require ON)
    set(why "ON")
  else()
    set(require OFF)
    set(why "OFF")
  endif()

  get_property(built GLOBAL PROPERTY EFL_COMPONENTS_BUILT)
  get_property(missing GLOBAL PROPERTY EFL_COMPONENTS_MISSING)
  get_property(off GLOBAL PROPERTY EFL_COMPONENTS_OFF)
  list(REMOVE_DUPLICATES built)
  list(LENGTH missing n_missing)

  set(lines "efl: ---- components of ${PROJECT_BINARY_DIR} (EFL_REQUIRE_ALL=${why})")
  list(JOIN built ", " built_text)
  if(built_text STREQUAL "")
    set(built_text "(no optional component)")
  endif()
  list(APPEND lines "efl: built: ${built_text}")
  foreach(name IN LISTS off)
    get_property(r GLOBAL PROPERTY "EFL_COMPONENT_REASON ${name}")
    list(APPEND lines "efl: off (by option): ${name} (${r})")
  endforeach()
  set(fatal_text "")
  foreach(name IN LISTS missing)
    get_property(r GLOBAL PROPERTY "EFL_COMPONENT_REASON ${name}")
    list(APPEND lines "efl: NOT built: ${name} (${r})")
    string(APPEND fatal_text "\n  ${name}: ${r}")
  endforeach()
  if(n_missing EQUAL 0)
    list(APPEND lines "efl: every component was built")
  else()
    list(APPEND lines "efl: ${n_missing} component(s) NOT built")
  endif()

  list(JOIN lines "\n" file_text)
  file(WRITE ${PROJECT_BINARY_DIR}/efl-components.txt "${file_text}\n")
  message(STATUS "")
  foreach(line IN LISTS lines)
    message(STATUS "${line}")
  endforeach()
  message(STATUS "")

  if(n_missing GREATER 0)
    if(require)
      message(FATAL_ERROR "efl: EFL_REQUIRE_ALL (${why}): ${n_missing} component(s) cannot be built:"
                          "${fatal_text}\n"
                          "Install what is missing, or configure with -DEFL_REQUIRE_ALL=OFF to build without them.")
    else()
      message(WARNING "efl: ${n_missing} component(s) NOT built (the summary above says why). "
                      "Under CI=true or -DEFL_REQUIRE_ALL=ON this is an error.")
    endif()
  endif()
endfunction()
