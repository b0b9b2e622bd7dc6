/* json.c - json-c loaded on first use (json.h says why). */
#include "json.h"

#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

static void *handle;
static struct cli_json_api api;

const struct cli_json_api *cli_json(void)
{
    if (__atomic_load_n(&handle, __ATOMIC_ACQUIRE))
        return &api;
    struct nv_lazy_symbol syms[] = {
        {"json_object_new_object", &api.new_object},
        {"json_object_new_array", &api.new_array},
        {"json_object_new_string", &api.new_string},
        {"json_object_new_int", &api.new_int},
        {"json_object_new_int64", &api.new_int64},
        {"json_object_new_boolean", &api.new_boolean},
        {"json_object_object_add", &api.object_add},
        {"json_object_array_add", &api.array_add},
        {"json_object_put", &api.put},
        {"json_object_to_json_string_ext", &api.to_json_string_ext},
    };
    struct nv_error err = {0};
    if (nv_lazy_load(NVTPM_SONAME_JSONC, "printing JSON", syms, sizeof(syms) / sizeof(syms[0]),
                     &handle, &err) < 0)
        exit(cli_fail(CLI_EXIT_ERROR, "%s", err.msg));
    return &api;
}
