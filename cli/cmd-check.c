/* cmd-check.c - `nvtpm check IMG [--repair] [--json] [-f FORMAT]`: the image's
 * structure checked as `qemu-img check` does, with its exit codes:
 * 0 clean, 1 error (could not check), 2 corruption, 3 leaks only. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "block.h"
#include "cli.h"

enum { CHECK_CLEAN = 0, CHECK_ERROR = 1, CHECK_CORRUPT = 2, CHECK_LEAKS = 3 };

static const char check_usage[] =
    "Usage: nvtpm check IMG [--repair] [--json] [-f raw|qcow2]\n"
    "\n"
    "Check the image's structure as qemu-img check does: every cluster's refcount\n"
    "against its references, COPIED flags, table entries.\n"
    "\n"
    "  -r, --repair   lower the refcounts of leaked clusters (opens the image\n"
    "                 read-write and takes ownership)\n"
    "      --json     print the result as JSON\n"
    "  -f FORMAT      the image format (default: probed)\n"
    "  -h, --help     this help\n"
    "\n"
    "Exit codes: 0 clean, 1 the check could not run, 2 corruption found,\n"
    "3 leaked clusters only (harmless; --repair removes them).\n";

static void print_json(const char *img, const struct bdrv_check_result *res, int status)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "filename", json_object_new_string(img));
    json_object_object_add(o, "corruptions", json_object_new_int64((int64_t)res->corruptions));
    json_object_object_add(o, "leaks", json_object_new_int64((int64_t)res->leaks));
    json_object_object_add(o, "leaks-fixed", json_object_new_int64((int64_t)res->leaks_fixed));
    json_object_object_add(o, "image-end-offset", json_object_new_int64((int64_t)res->image_end));
    json_object_object_add(o, "first-problem", json_object_new_string(res->first_problem));
    json_object_object_add(o, "exit-code", json_object_new_int(status));
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
    json_object_put(o);
}

static void print_text(const struct bdrv_check_result *res)
{
    if (res->leaks_fixed)
        printf("Repaired %llu leaked clusters.\n", (unsigned long long)res->leaks_fixed);
    if (!res->corruptions && res->leaks <= res->leaks_fixed)
        printf("No errors were found on the image.\n");
    if (res->corruptions)
        printf("%llu errors were found on the image (first: %s).\n",
               (unsigned long long)res->corruptions, res->first_problem);
    if (res->leaks > res->leaks_fixed)
        printf("%llu leaked clusters were found on the image; this means waste of disk space, "
               "but no harm to data (nvtpm check --repair removes them).\n",
               (unsigned long long)(res->leaks - res->leaks_fixed));
    if (res->image_end)
        printf("Image end offset: %llu\n", (unsigned long long)res->image_end);
}

int cmd_check(int argc, char **argv)
{
    static const struct option opts[] = {{"repair", no_argument, NULL, 'r'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    bool repair = false, json = false;
    const char *format = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "rf:h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            repair = true;
            break;
        case 'j':
            json = true;
            break;
        case 'f':
            format = optarg;
            break;
        case 'h':
            fputs(check_usage, stdout);
            return 0;
        default:
            return cli_usage_error("check", argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return cli_fail(CLI_EXIT_USAGE, "check: give exactly one image (see nvtpm check --help)");
    const char *img = argv[optind];
    struct nv_error err = {0};
    struct bdrv_node *bs =
        bdrv_open_format(format, img, repair ? BDRV_O_RDWR | BDRV_O_OWNER : 0, NULL, &err);
    if (!bs)
        return cli_fail(CHECK_ERROR, "%s", err.msg);
    struct bdrv_check_result res;
    /* Shared: a server's commits (exclusive) never interleave with the check. */
    int r = bdrv_lock(bs, repair ? BDRV_LOCK_EXCLUSIVE : BDRV_LOCK_SHARED, 10000, &err);
    if (r == 0)
        r = bdrv_check(bs, &res, repair, &err);
    bdrv_close(bs);
    if (r < 0)
        return cli_fail(CHECK_ERROR, "%s", err.msg);
    int status = res.corruptions               ? CHECK_CORRUPT
                 : res.leaks > res.leaks_fixed ? CHECK_LEAKS
                                               : CHECK_CLEAN;
    if (json)
        print_json(img, &res, status);
    else
        print_text(&res);
    return status;
}
