#!/usr/bin/python3
"""python/efl/_lib.py against include/efl/efl.h: the binding copies the header's enums, structure
layouts and prototypes by hand, and nothing else would notice a copy gone wrong (ctypes passes
whatever it is given).

Usage: test_abi.py <abi_probe> <efl.h>. tests/abi_probe.c, compiled against efl.h, prints what
the compiler makes of it: every enumerator's value, every structure's size, alignment and field
offsets and sizes, the scalar types' sizes. Checked here:
- the probe is complete: it lists every enumerator of every enum and every field of every
  structure that efl.h declares (names read from the header's text);
- _lib.Status and the enum dicts (REDUCTIONS, DTYPES, LAYOUTS, ...) hold exactly the enums'
  values, under the names the table below gives each;
- Config, HostBatch and Batch have the C structures' field names in order, offsets, sizes, total
  size and alignment; MAX_LEVELS is EFL_MAX_LEVELS;
- every function in _lib._PROTOTYPES is declared in efl.h with as many parameters, each a
  pointer where C has one and otherwise a scalar of C's size, float-ness and signedness; void
  results are None.
Anything _lib.py gains (a structure, an enum dict, a constant) must get a line in the tables
below, or the test fails. Needs neither libefl nor a device nor numpy: _lib.py is loaded from
PYTHONPATH as a file. Exit: 0 all passed, 1 a test failed.
"""
import ctypes
import importlib.util
import os
import re
import subprocess
import sys
import time
import traceback

# _lib.py's names for the C names: enum dicts (C enum, {key: enumerator}), structures, constants
ENUM_MIRRORS = {
    "REDUCTIONS": ("efl_reduction", {"mean": "EFL_REDUCTION_MEAN", "sum": "EFL_REDUCTION_SUM",
                                     "none": "EFL_REDUCTION_NONE"}),
    "LABEL_CONVENTIONS": ("efl_label_convention", {"reference": "EFL_LABELS_REFERENCE",
                                                   "zero_based": "EFL_LABELS_ZERO_BASED"}),
    "ACCUMULATE": ("efl_accumulate", {"auto": "EFL_ACCUMULATE_AUTO", "float_pairs": "EFL_ACCUMULATE_FLOAT_PAIRS"}),
    "DTYPES": ("efl_dtype", {"float32": "EFL_DTYPE_FLOAT32", "float16": "EFL_DTYPE_FLOAT16",
                             "bfloat16": "EFL_DTYPE_BFLOAT16"}),
    "MODES": ("efl_mode", {"efl": "EFL_MODE_EFL", "focal": "EFL_MODE_FOCAL", "eqlv2": "EFL_MODE_EQLV2"}),
    "LAYOUTS": ("efl_layout", {"rows": "EFL_LAYOUT_ROWS", "anchor": "EFL_LAYOUT_ANCHOR_MAJOR",
                               "class": "EFL_LAYOUT_CLASS_MAJOR"}),
    "OPS": ("efl_op", {"step": "EFL_OP_STEP", "forward": "EFL_OP_FORWARD", "accumulate": "EFL_OP_ACCUMULATE",
                       "compute": "EFL_OP_COMPUTE", "collect": "EFL_OP_COLLECT"}),
}
STATUS_ENUM = "efl_status"
STATUS_SENTINELS = {"EFL_STATUS_COUNT_"}  # not a status: no mirror
STRUCT_MIRRORS = {"Config": "efl_loss_config", "HostBatch": "efl_host_batch", "Batch": "efl_batch"}
CONST_MIRRORS = {"MAX_LEVELS": "EFL_MAX_LEVELS"}
# OpenCL handle types: pointers to opaque structures
CL_HANDLES = {"cl_platform_id", "cl_device_id", "cl_context", "cl_command_queue", "cl_mem", "cl_program",
              "cl_kernel", "cl_event"}

# ------------------------------------------------------------------------------- inputs


def read_probe(path):
    """The probe's lines as {"enum": {type: {name: value}} (in order), "struct": {type: (size,
    align)}, "field": {type: [(name, offset, size)]}, "const": {name: value}, "sizeof": {type: n}}."""
    out = subprocess.run([path], capture_output=True, text=True, check=True).stdout
    facts = {"enum": {}, "struct": {}, "field": {}, "const": {}, "sizeof": {}}
    for line in out.splitlines():
        kind, rest = line.split(" ", 1)
        if kind == "enum":
            t, name, value = rest.split()
            facts["enum"].setdefault(t, {})[name] = int(value)
        elif kind == "struct":
            t, size, align = rest.split()
            facts["struct"][t] = (int(size), int(align))
        elif kind == "field":
            t, name, off, size = rest.split()
            facts["field"].setdefault(t, []).append((name, int(off), int(size)))
        elif kind == "const":
            name, value = rest.rsplit(" ", 1)
            facts["const"][name] = int(value)
        elif kind == "sizeof":
            t, size = rest.rsplit(" ", 1)
            facts["sizeof"][t] = int(size)
        else:
            raise AssertionError("unexpected probe line %r" % line)
    return facts


def header_text(path):
    """efl.h without comments and preprocessor lines."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    # continuation lines belong to their directive
    text = re.sub(r"\\\n", " ", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def header_enums(text):
    """{enum type: [enumerator, ...]} in declaration order."""
    enums = {}
    for m in re.finditer(r"typedef\s+enum\s*\w*\s*\{(.*?)\}\s*(\w+)\s*;", text, re.S):
        names = [item.split("=")[0].strip() for item in m.group(1).split(",")]
        enums[m.group(2)] = [n for n in names if n]
    return enums


def header_structs(text):
    """{struct type: [field, ...]} in declaration order (typedef'd structures with a body)."""
    structs = {}
    for m in re.finditer(r"typedef\s+struct\s*\w*\s*\{(.*?)\}\s*(\w+)\s*;", text, re.S):
        fields = []
        for decl in m.group(1).split(";"):
            for declarator in decl.split(","):
                if declarator.strip():
                    fields.append(re.search(r"(\w+)\s*(?:\[[^\]]*\])?\s*$", declarator).group(1))
        structs[m.group(2)] = fields
    return structs


def header_functions(text):
    """{name: (result type, [parameter type, ...])}; an array parameter counts as a pointer."""
    funcs = {}
    for m in re.finditer(r"\bEFL_API\s+([^;{}()]*?)\b(\w+)\s*\(([^;()]*)\)\s*;", text, re.S):
        params = []
        if m.group(3).strip() not in ("", "void"):
            for p in m.group(3).split(","):
                p = " ".join(p.split())
                array = "[" in p
                ptype = re.sub(r"\w+\s*(\[[^\]]*\])?$", "", p).strip()
                params.append(ptype + (" *" if array else ""))
        funcs[m.group(2)] = (" ".join(m.group(1).split()), params)
    return funcs


def load_lib_py():
    """python/efl/_lib.py as a module of its own, from PYTHONPATH (no efl/__init__.py, no numpy)."""
    for entry in sys.path:
        path = os.path.join(entry or ".", "efl", "_lib.py")
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("efl_lib_under_test", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise AssertionError("efl/_lib.py not found on sys.path (set PYTHONPATH to <repo>/python)")


PROBE = HEADER = LIB = None


def setup(argv):
    global PROBE, HEADER, LIB
    if len(argv) != 3:
        raise SystemExit("usage: test_abi.py <abi_probe> <efl.h>")
    PROBE = read_probe(argv[1])
    HEADER = header_text(argv[2])
    LIB = load_lib_py()
    print("%s against %s (probe %s)" % (LIB.__file__, argv[2], argv[1]))


# -------------------------------------------------------------------------------- tests


def test_header_parsed():
    """The parsers see the header's declarations at all (else every comparison is vacuous)."""
    enums, structs, funcs = header_enums(HEADER), header_structs(HEADER), header_functions(HEADER)
    assert {STATUS_ENUM, "efl_dtype", "efl_op"} <= set(enums), sorted(enums)
    assert {"efl_loss_config", "efl_batch", "efl_host_batch"} <= set(structs), sorted(structs)
    assert {"efl_loss_create", "efl_loss_run_host", "efl_version_string"} <= set(funcs), sorted(funcs)
    assert structs["efl_host_batch"][:6] == ["layout", "dtype", "rows", "images", "anchors", "levels"], structs


def test_probe_complete():
    """Every enum of efl.h, and every structure _lib.py mirrors, listed whole by the probe, in
    the header's order."""
    for enum, names in header_enums(HEADER).items():
        got = list(PROBE["enum"].get(enum, {}))
        assert got == names, "tests/abi_probe.c lists %s as %s; efl.h declares %s" % (enum, got, names)
    structs = header_structs(HEADER)
    for ctype in set(STRUCT_MIRRORS.values()) | set(PROBE["struct"]):
        got = [f[0] for f in PROBE["field"].get(ctype, [])]
        assert got == structs[ctype], "tests/abi_probe.c lists %s's fields as %s; efl.h declares %s" % (
            ctype, got, structs[ctype])
        assert ctype in PROBE["struct"], "tests/abi_probe.c lacks STRUCT(%s)" % ctype


def test_status():
    """_lib.Status: every efl_status under its name without EFL_, with its value, and nothing else."""
    c = {n: v for n, v in PROBE["enum"][STATUS_ENUM].items() if n not in STATUS_SENTINELS}
    py = {"EFL_" + k: v for k, v in vars(LIB.Status).items() if k.isupper()}
    missing, extra = sorted(set(c) - set(py)), sorted(set(py) - set(c))
    assert not missing and not extra, "_lib.Status lacks %s, has unknown %s" % (missing, extra)
    wrong = ["%s: _lib.py %d, efl.h %d" % (n, py[n], c[n]) for n in sorted(c) if py[n] != c[n]]
    assert not wrong, "_lib.Status values differ from efl.h: " + "; ".join(wrong)
    assert PROBE["enum"][STATUS_ENUM]["EFL_STATUS_COUNT_"] == len(c), "EFL_STATUS_COUNT_ is not the count"


def test_enum_dicts():
    """Each enum dict of _lib.py: exactly its enum's values, under the names ENUM_MIRRORS gives;
    and every such dict of _lib.py has an entry there."""
    dicts = {k for k, v in vars(LIB).items()
             if k.isupper() and isinstance(v, dict) and v and all(type(x) is int for x in v.values())}
    assert dicts == set(ENUM_MIRRORS), "enum dicts in _lib.py %s, in this test %s" % (sorted(dicts),
                                                                                   sorted(ENUM_MIRRORS))
    for attr, (enum, names) in ENUM_MIRRORS.items():
        c = PROBE["enum"][enum]
        assert set(names.values()) == set(c), "ENUM_MIRRORS[%r] names %s; efl.h's %s has %s" % (
            attr, sorted(names.values()), enum, sorted(c))
        py = getattr(LIB, attr)
        assert set(py) == set(names), "_lib.%s has keys %s, expected %s" % (attr, sorted(py), sorted(names))
        wrong = ["%r: _lib.py %d, %s %d" % (k, py[k], names[k], c[names[k]]) for k in names if py[k] != c[names[k]]]
        assert not wrong, "_lib.%s differs from efl.h: %s" % (attr, "; ".join(wrong))


def test_constants():
    """MAX_LEVELS and any other integer constant of _lib.py: the header's value."""
    consts = {k for k, v in vars(LIB).items() if k.isupper() and type(v) is int}
    assert consts == set(CONST_MIRRORS), "int constants in _lib.py %s, in this test %s" % (sorted(consts),
                                                                                        sorted(CONST_MIRRORS))
    for attr, macro in CONST_MIRRORS.items():
        assert getattr(LIB, attr) == PROBE["const"][macro], "_lib.%s = %d, efl.h %s = %d" % (
            attr, getattr(LIB, attr), macro, PROBE["const"][macro])


def test_structures():
    """Config, HostBatch and Batch: the C structures' fields in order, each at C's offset with C's size;
    the same total size and alignment. Every Structure in _lib.py has an entry in STRUCT_MIRRORS."""
    classes = {k for k, v in vars(LIB).items()
               if isinstance(v, type) and issubclass(v, ctypes.Structure) and v.__module__ == LIB.__name__}
    assert classes == set(STRUCT_MIRRORS), "Structures in _lib.py %s, in this test %s" % (sorted(classes),
                                                                                       sorted(STRUCT_MIRRORS))
    for cls_name, ctype in STRUCT_MIRRORS.items():
        cls = getattr(LIB, cls_name)
        c_fields = PROBE["field"][ctype]
        py_names = [f[0] for f in cls._fields_]
        assert py_names == [f[0] for f in c_fields], "_lib.%s fields %s; %s has %s" % (
            cls_name, py_names, ctype, [f[0] for f in c_fields])
        wrong = []
        for name, off, size in c_fields:
            d = getattr(cls, name)
            if (d.offset, d.size) != (off, size):
                wrong.append("%s at %d size %d, C at %d size %d" % (name, d.offset, d.size, off, size))
        assert not wrong, "_lib.%s differs from %s: %s" % (cls_name, ctype, "; ".join(wrong))
        size, align = PROBE["struct"][ctype]
        assert (ctypes.sizeof(cls), ctypes.alignment(cls)) == (size, align), (
            "_lib.%s: sizeof %d, alignment %d; %s: %d, %d" % (cls_name, ctypes.sizeof(cls), ctypes.alignment(cls),
                                                             ctype, size, align))


def _is_pointer(t):
    return t in (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_wchar_p) or (
        isinstance(t, type) and issubclass(t, (ctypes._Pointer, ctypes._CFuncPtr)))


def _check_type(where, ctext, t):
    """A ctypes type t for the C type ctext (a parameter's or a result's)."""
    base = " ".join(w for w in ctext.replace("*", " * ").split() if w != "const")
    if "*" in base or base in CL_HANDLES:
        assert _is_pointer(t), "%s: C %r is a pointer, _lib.py has %s" % (where, ctext, t)
        return
    assert not _is_pointer(t) and t is not None, "%s: C %r is a scalar, _lib.py has %s" % (where, ctext, t)
    assert base in PROBE["sizeof"], "tests/abi_probe.c lacks SIZEOF(%s) (%s)" % (base, where)
    assert ctypes.sizeof(t) == PROBE["sizeof"][base], "%s: C %s is %d bytes, _lib.py's %s %d" % (
        where, base, PROBE["sizeof"][base], t.__name__, ctypes.sizeof(t))
    c_float = base in ("float", "double")
    assert c_float == (t in (ctypes.c_float, ctypes.c_double)), "%s: C %s, _lib.py %s" % (where, base, t.__name__)
    if not c_float and not base.startswith("efl_"):  # an enum's signedness is the compiler's choice
        c_signed = base in ("int", "int32_t", "cl_int")
        assert c_signed == (t(-1).value < 0), "%s: C %s is %ssigned, _lib.py's %s is not" % (
            where, base, "" if c_signed else "un", t.__name__)


def test_prototypes():
    """Every function _lib.py declares: in efl.h, with as many parameters, each of a matching
    kind (pointer, or scalar of C's size, float-ness and signedness); void results None."""
    funcs = header_functions(HEADER)
    for name, (restype, argtypes) in LIB._PROTOTYPES.items():
        assert name in funcs, "_lib._PROTOTYPES declares %s, which efl.h does not" % name
        c_result, c_params = funcs[name]
        assert len(argtypes) == len(c_params), "%s: efl.h has %d parameters (%s), _lib.py %d" % (
            name, len(c_params), ", ".join(c_params), len(argtypes))
        for i, (ctext, t) in enumerate(zip(c_params, argtypes)):
            _check_type("%s parameter %d" % (name, i + 1), ctext, t)
        if c_result == "void":
            assert restype is None, "%s returns void, _lib.py says %s" % (name, restype)
        else:
            _check_type("%s result" % name, c_result, restype)
    assert set(LIB._OPTIONAL) <= set(LIB._PROTOTYPES), "_OPTIONAL names undeclared functions: %s" % sorted(
        set(LIB._OPTIONAL) - set(LIB._PROTOTYPES))


TESTS = [test_header_parsed, test_probe_complete, test_status, test_enum_dicts, test_constants, test_structures,
         test_prototypes]


def main(argv):
    setup(argv)
    failed = 0
    for t in TESTS:
        start = time.time()
        try:
            t()
            print("ok   %s (%.2fs)" % (t.__name__, time.time() - start))
        except Exception:
            failed += 1
            print("FAIL %s" % t.__name__)
            traceback.print_exc(file=sys.stdout)
    print("%d passed, %d failed" % (len(TESTS) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
