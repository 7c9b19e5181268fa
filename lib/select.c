/* efl_context_create_default: find a device on our own (EFL_DEVICE, else first GPU, else CPU). */
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

/* Every device of every platform that answers; a platform that fails or lists nothing is
 * skipped, so a broken platform 0 does not hide working ones. */
static size_t list_devices(candidate *out, size_t max)
{
    cl_uint np = 0;
    if (clGetPlatformIDs(0, NULL, &np) != CL_SUCCESS || np == 0)
        return 0;
    cl_platform_id plats[32];
    if (np > 32)
        np = 32;
    if (clGetPlatformIDs(np, plats, NULL) != CL_SUCCESS)
        return 0;
    size_t count = 0;
    for (cl_uint p = 0; p < np; ++p) {
        cl_uint nd = 0;
        cl_device_id devs[32];
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 32, devs, &nd) != CL_SUCCESS)
            continue;
        if (nd > 32)
            nd = 32;
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

/* "P:D", or "P" (first device of platform P), else a name substring. -1: nothing matched. */
static int match(const candidate *c, size_t count, const char *sel)
{
    unsigned p, d;
    char tail;
    if (sscanf(sel, "%u:%u%c", &p, &d, &tail) == 2) {
        for (size_t i = 0; i < count; ++i)
            if (c[i].pi == p && c[i].di == d)
                return (int)i;
        return -1;
    }
    if (sscanf(sel, "%u%c", &p, &tail) == 1) {
        for (size_t i = 0; i < count; ++i)
            if (c[i].pi == p)
                return (int)i;
        return -1;
    }
    for (size_t i = 0; i < count; ++i)
        if (contains_nocase(c[i].label, sel))
            return (int)i;
    return -1;
}

efl_status efl_context_create_default(efl_context **out)
{
    if (!out)
        return EFL_ERROR_NULL_HANDLE;
    *out = NULL;
    candidate cands[64];
    size_t count = list_devices(cands, 64);
    if (count == 0)
        return EFL_ERROR_NO_DEVICE;

    int pick = -1;
    const char *sel = getenv("EFL_DEVICE");
    if (sel && *sel) {
        pick = match(cands, count, sel);
        if (pick < 0)
            return EFL_ERROR_DEVICE_NOT_FOUND;
    } else {
        static const cl_device_type order[] = {CL_DEVICE_TYPE_GPU, CL_DEVICE_TYPE_CPU, CL_DEVICE_TYPE_ALL};
        for (int o = 0; o < 3 && pick < 0; ++o)
            for (size_t i = 0; i < count && pick < 0; ++i)
                if (cands[i].type & order[o])
                    pick = (int)i;
    }

    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)cands[pick].platform, 0};
    cl_int err = CL_SUCCESS;
    cl_context cl = clCreateContext(props, 1, &cands[pick].device, NULL, NULL, &err);
    if (err != CL_SUCCESS)
        return err == CL_OUT_OF_HOST_MEMORY ? EFL_ERROR_OUT_OF_MEMORY : EFL_ERROR_OPENCL;
    efl_status st = efl_context_create(cl, cands[pick].device, out);
    clReleaseContext(cl); /* the efl_context holds its own reference */
    if (st == EFL_OK)
        efl_log(*out, "picked %u:%u %s%s%s", cands[pick].pi, cands[pick].di, cands[pick].label,
                sel && *sel ? " by EFL_DEVICE=" : " (default: first GPU, else CPU)", sel && *sel ? sel : "");
    return st;
}
