/* json.h - json-c for the commands' JSON output (info, check, validate,
 * socket --print-capabilities), loaded the first time one prints JSON
 * (util/lazy.c): `nvtpm socket`, one process per VM, then never maps it.
 * Include this instead of <json-c/json.h>: the json-c names used below call
 * through the loaded library; the first call loads it, and if it cannot be
 * loaded the command ends there with one line and exit code 9. */
#ifndef NVTPM_CLI_JSON_H
#define NVTPM_CLI_JSON_H

#include <json-c/json.h>

struct cli_json_api {
    __typeof__(json_object_new_object) *new_object;
    __typeof__(json_object_new_array) *new_array;
    __typeof__(json_object_new_string) *new_string;
    __typeof__(json_object_new_int) *new_int;
    __typeof__(json_object_new_int64) *new_int64;
    __typeof__(json_object_new_boolean) *new_boolean;
    __typeof__(json_object_object_add) *object_add;
    __typeof__(json_object_array_add) *array_add;
    __typeof__(json_object_put) *put;
    __typeof__(json_object_to_json_string_ext) *to_json_string_ext;
};
const struct cli_json_api *cli_json(void);

#define json_object_new_object         (*cli_json()->new_object)
#define json_object_new_array          (*cli_json()->new_array)
#define json_object_new_string         (*cli_json()->new_string)
#define json_object_new_int            (*cli_json()->new_int)
#define json_object_new_int64          (*cli_json()->new_int64)
#define json_object_new_boolean        (*cli_json()->new_boolean)
#define json_object_object_add         (*cli_json()->object_add)
#define json_object_array_add          (*cli_json()->array_add)
#define json_object_put                (*cli_json()->put)
#define json_object_to_json_string_ext (*cli_json()->to_json_string_ext)

#endif
