/* Finding devices: EFL_DEVICE selectors, efl_devices_matching, efl_device_pick,
 * efl_context_create_default. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct {
    cl_platform_id platform;
    cl_device_id device;
    unsigned pi, di;
    cl_device_type type;
    char label[800]; /* "platform [vendor] / device" */
} candidate;

enum { MAX_PLATFORMS = 32, MAX_DEVICES = 32, MAX_CANDIDATES = 256 };

/* Every device of every platform that answers; a platform that fails or lists nothing is
 * skipped, so a broken platform 0 does not hide working ones. */
static size_t list_devices(candidate *out, size_t max)
{
    cl_uint np = 0;
    if (clGetPlatformIDs(0, NULL, &np) != CL_SUCCESS || np == 0)
        return 0;
    cl_platform_id plats[MAX_PLATFORMS];
    if (np > MAX_PLATFORMS)
        np = MAX_PLATFORMS;
    if (clGetPlatformIDs(np, plats, NULL) != CL_SUCCESS)
        return 0;
    size_t count = 0;
    for (cl_uint p = 0; p < np; ++p) {
        cl_uint nd = 0;
        cl_device_id devs[MAX_DEVICES];
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, MAX_DEVICES, devs, &nd) != CL_SUCCESS)
            continue;
        if (nd > MAX_DEVICES)
            nd = MAX_DEVICES;
        char pname[256] = "", pvendor[256] = "", dname[256] = "";
        clGetPlatformInfo(plats[p], CL_PLATFORM_NAME, sizeof pname - 1, pname, NULL);
        clGetPlatformInfo(plats[p], CL_PLATFORM_VENDOR, sizeof pvendor - 1, pvendor, NULL);
        for (cl_uint d = 0; d < nd && count < max; ++d) {
            candidate *c = &out[count++];
            c->platform = plats[p];
            c->device = devs[d];
            c->pi = p;
            c->di = d;
            c->type = 0;
            clGetDeviceInfo(devs[d], CL_DEVICE_TYPE, sizeof c->type, &c->type, NULL);
            dname[0] = '\0';
            clGetDeviceInfo(devs[d], CL_DEVICE_NAME, sizeof dname - 1, dname, NULL);
            snprintf(c->label, sizeof c->label, "%s [%s] / %s", pname, pvendor, dname);
        }
    }
    return count;
}

static int contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; ++hay) {
        size_t i = 0;
        while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            ++i;
        if (i == n)
            return 1;
    }
    return n == 0;
}

static const struct {
    const char *word;
    cl_device_type type;
} type_words[] = {
    {"gpu", CL_DEVICE_TYPE_GPU},
    {"cpu", CL_DEVICE_TYPE_CPU},
    {"accelerator", CL_DEVICE_TYPE_ACCELERATOR},
};

/* The type a selector names: a type word as the whole selector or before its first ':'
 * (case-insensitive), *name then the rest after the ':' ("" without one); 0 for any other. */
static cl_device_type selector_type(const char *sel, const char **name)
{
    const char *colon = strchr(sel, ':');
    const size_t n = colon ? (size_t)(colon - sel) : strlen(sel);
    for (size_t t = 0; t < sizeof type_words / sizeof type_words[0]; ++t) {
        const char *w = type_words[t].word;
        size_t i = 0;
        while (i < n && w[i] && tolower((unsigned char)sel[i]) == w[i])
            ++i;
        if (i == n && !w[i]) {
            *name = colon ? colon + 1 : "";
            return type_words[t].type;
        }
    }
    return 0;
}

/* Does the selector ("P:D", "P", a type word with an optional ":name", or a name substring;
 * NULL/"" = any) take this device? */
static int matches(const candidate *c, const char *sel)
{
    unsigned p, d;
    char tail;
    const char *name = "";
    if (!sel || !*sel)
        return 1;
    if (sscanf(sel, "%u:%u%c", &p, &d, &tail) == 2)
        return c->pi == p && c->di == d;
    if (sscanf(sel, "%u%c", &p, &tail) == 1)
        return c->pi == p;
    const cl_device_type type = selector_type(sel, &name);
    if (type)
        return (c->type & type) && contains_nocase(c->label, name);
    return contains_nocase(c->label, sel);
}

/* The index efl_context_create_default takes: the first device the selector matches, or with
 * none (NULL/"") the first GPU, else the first CPU, else the first device; count if none. */
static size_t pick_index(const candidate *cands, size_t count, const char *sel)
{
    if (sel && *sel) {
        for (size_t i = 0; i < count; ++i)
            if (matches(&cands[i], sel))
                return i;
        return count;
    }
    static const cl_device_type order[] = {CL_DEVICE_TYPE_GPU, CL_DEVICE_TYPE_CPU, CL_DEVICE_TYPE_ALL};
    for (int o = 0; o < 3; ++o)
        for (size_t i = 0; i < count; ++i)
            if (cands[i].type & order[o])
                return i;
    return count;
}

size_t efl_devices_matching(const char *selector, cl_device_id *devices, size_t max)
{
    candidate *cands = malloc(MAX_CANDIDATES * sizeof *cands);
    if (!cands)
        return 0;
    const size_t count = list_devices(cands, MAX_CANDIDATES);
    size_t found = 0;
    for (size_t i = 0; i < count; ++i) {
        if (!matches(&cands[i], selector))
            continue;
        if (devices && found < max)
            devices[found] = cands[i].device;
        ++found;
    }
    free(cands);
    return found;
}

size_t efl_device_describe(cl_device_id device, char *buf, size_t size)
{
    candidate *cands = malloc(MAX_CANDIDATES * sizeof *cands);
    char text[900] = "unknown device";
    if (cands) {
        const size_t count = list_devices(cands, MAX_CANDIDATES);
        for (size_t i = 0; i < count; ++i)
            if (cands[i].device == device)
                snprintf(text, sizeof text, "%u:%u %s", cands[i].pi, cands[i].di, cands[i].label);
        free(cands);
    }
    const size_t len = strlen(text);
    if (buf && size) {
        const size_t n = len < size - 1 ? len : size - 1;
        memcpy(buf, text, n);
        buf[n] = '\0';
    }
    return len;
}

size_t efl_devices_summary(char *buf, size_t size)
{
    candidate *cands = malloc(MAX_CANDIDATES * sizeof *cands);
    if (buf && size)
        buf[0] = '\0';
    if (!cands)
        return 0;
    const size_t count = list_devices(cands, MAX_CANDIDATES);
    size_t len = 0;
    for (size_t i = 0; i < count; ++i) {
        char line[900];
        const int k = snprintf(line, sizeof line, "%u:%u %s\n", cands[i].pi, cands[i].di, cands[i].label);
        if (k <= 0)
            continue;
        if (buf && len + (size_t)k < size)
            memcpy(buf + len, line, (size_t)k + 1);
        else if (buf && size && len < size)
            buf[len] = '\0'; /* truncated: keep whole lines only */
        len += (size_t)k;
    }
    free(cands);
    return len;
}

/* The device a selector (NULL or "": the default rule) picks, as its candidate entry. */
static efl_status pick_candidate(const char *selector, candidate *out)
{
    candidate *cands = malloc(MAX_CANDIDATES * sizeof *cands);
    if (!cands)
        return EFL_ERROR_OUT_OF_MEMORY;
    const size_t count = list_devices(cands, MAX_CANDIDATES);
    const size_t pick = pick_index(cands, count, selector);
    const efl_status st = count == 0 ? EFL_ERROR_NO_DEVICE : pick == count ? EFL_ERROR_DEVICE_NOT_FOUND : EFL_OK;
    if (st == EFL_OK)
        *out = cands[pick];
    free(cands);
    return st;
}

efl_status efl_device_pick(const char *selector, cl_device_id *device)
{
    if (!device)
        return EFL_ERROR_NULL_HANDLE;
    *device = NULL;
    candidate c;
    const efl_status st = pick_candidate(selector, &c);
    if (st == EFL_OK)
        *device = c.device;
    return st;
}

const char *efl_device_type_name(cl_device_id device)
{
    cl_device_type type = 0;
    if (!device || clGetDeviceInfo(device, CL_DEVICE_TYPE, sizeof type, &type, NULL) != CL_SUCCESS)
        return "unknown";
    for (size_t t = 0; t < sizeof type_words / sizeof type_words[0]; ++t)
        if (type & type_words[t].type)
            return type_words[t].word;
    return "other";
}

efl_status efl_context_create_default(efl_context **out)
{
    if (!out)
        return EFL_ERROR_NULL_HANDLE;
    *out = NULL;
    const char *sel = getenv("EFL_DEVICE");
    candidate c;
    const efl_status picked = pick_candidate(sel, &c);
    if (picked != EFL_OK)
        return picked;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)c.platform, 0};
    cl_int err = CL_SUCCESS;
    cl_context cl = clCreateContext(props, 1, &c.device, NULL, NULL, &err);
    if (err != CL_SUCCESS)
        return err == CL_OUT_OF_HOST_MEMORY ? EFL_ERROR_OUT_OF_MEMORY : EFL_ERROR_OPENCL;
    efl_status st = efl_context_create(cl, c.device, out);
    clReleaseContext(cl); /* the efl_context holds its own reference */
    if (st == EFL_OK)
        efl_log(*out, "picked %u:%u %s%s%s", c.pi, c.di, c.label,
                sel && *sel ? " by EFL_DEVICE=" : " (default: first GPU, else CPU)", sel && *sel ? sel : "");
    return st;
}
