/* cmd-check.c - `nvtpm check IMG [--repair] [--json] [-f FORMAT]`: the image's
 * structure checked as `qemu-img check` does, with its exit codes:
 * 0 clean, 1 error (could not check), 2 corruption, 3 leaks only. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "block.h"
#include "cli.h"
#include "json.h"
#include "nvram.h"

enum { CHECK_CLEAN = 0, CHECK_ERROR = 1, CHECK_CORRUPT = 2, CHECK_LEAKS = 3 };

static const char check_usage[] =
    "Usage: nvtpm check IMG [--repair] [--json] [--key KEY] [-f raw|qcow2]\n"
    "\n"
    "Check the image's structure as qemu-img check does (every cluster's refcount\n"
    "against its references, COPIED flags, table entries), then its NVRAM: both\n"
    "superblock copies and every blob slot. A damaged slot whose partner is good\n"
    "(what a crash during a commit leaves) is reported but is not corruption; a\n"
    "blob with no usable slot, or no valid superblock, is. With --key, encrypted\n"
    "slots are authenticated too.\n"
    "\n"
    "  -r, --repair   lower the refcounts of leaked clusters (opens the image\n"
    "                 read-write and takes ownership)\n"
    "      --json     print the result as JSON\n"
    "      --key KEY  the image's key (see nvtpm create --help)\n"
    "  -f FORMAT      the image format (default: probed)\n"
    "  -h, --help     this help\n"
    "\n"
    "Exit codes: 0 clean, 1 the check could not run, 2 corruption found,\n"
    "3 leaked clusters only (harmless; --repair removes them).\n";

#define MAX_NOTES 16

/* What the NVRAM check found: errors (corruption) and warnings. */
struct nvram_verdict {
    const char *state; /* ok, blank, corrupt */
    char errors[MAX_NOTES][600], warnings[MAX_NOTES][600];
    int nerrors, nwarnings;
};

static void note(char (*list)[600], int *n, const char *fmt, const char *a, const char *b)
{
    if (*n < MAX_NOTES)
        snprintf(list[(*n)++], 600, fmt, a, b);
}

static void check_nvram(struct bdrv_node *bs, const struct nvram_key *key, struct nvram_verdict *v,
                        struct nv_error *err)
{
    struct nvram_info info;
    int r = nvram_inspect(bs, key, 10000, &info, err);
    v->state = "ok";
    if (r == -ENODATA || r == -ENOMEDIUM) {
        v->state = r == -ENODATA ? "blank" : "none"; /* not ours: the qcow2 verdict stands */
        return;
    }
    if (r < 0) {
        v->state = "corrupt";
        note(v->errors, &v->nerrors, "%s%s", err->msg, "");
        return;
    }
    for (int i = 0; i < 2; i++)
        if (!info.superblock_valid[i])
            note(v->warnings, &v->nwarnings, "superblock copy %s is damaged; the other is %s",
                 i ? "1" : "0", "used");
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        const char *name = nvram_blob_name((enum nvram_blob)b);
        for (int s = 0; s < 2; s++) {
            char what[200];
            const struct nvram_slot_info *si = &info.blobs[b].slot[s];
            if (si->state != NVRAM_SLOT_DAMAGED)
                continue;
            snprintf(what, sizeof(what), "%s slot %c is damaged (%s)", name, 'A' + s, si->problem);
            if (info.blobs[b].current >= 0)
                note(v->warnings, &v->nwarnings, "%s; the other slot is %s", what, "used");
            else
                note(v->errors, &v->nerrors, "%s%s", what, "; no usable slot is left");
        }
    }
    if (v->nerrors)
        v->state = "corrupt";
}

static json_object *notes_json(char (*list)[600], int n)
{
    json_object *a = json_object_new_array();
    for (int i = 0; i < n; i++)
        json_object_array_add(a, json_object_new_string(list[i]));
    return a;
}

static void print_json(const char *img, const struct bdrv_check_result *res,
                       struct nvram_verdict *v, int status)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "filename", json_object_new_string(img));
    json_object_object_add(o, "corruptions", json_object_new_int64((int64_t)res->corruptions));
    json_object_object_add(o, "leaks", json_object_new_int64((int64_t)res->leaks));
    json_object_object_add(o, "leaks-fixed", json_object_new_int64((int64_t)res->leaks_fixed));
    json_object_object_add(o, "image-end-offset", json_object_new_int64((int64_t)res->image_end));
    json_object_object_add(o, "first-problem", json_object_new_string(res->first_problem));
    json_object *n = json_object_new_object();
    json_object_object_add(n, "state", json_object_new_string(v->state));
    json_object_object_add(n, "errors", notes_json(v->errors, v->nerrors));
    json_object_object_add(n, "warnings", notes_json(v->warnings, v->nwarnings));
    json_object_object_add(o, "nvram", n);
    json_object_object_add(o, "exit-code", json_object_new_int(status));
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
    json_object_put(o);
}

static void print_text(const struct bdrv_check_result *res, const struct nvram_verdict *v)
{
    for (int i = 0; i < v->nerrors; i++)
        printf("NVRAM error: %s\n", v->errors[i]);
    for (int i = 0; i < v->nwarnings; i++)
        printf("NVRAM warning: %s\n", v->warnings[i]);
    if (strcmp(v->state, "blank") == 0)
        printf("NVRAM: blank (no TPM state yet)\n");
    if (strcmp(v->state, "none") == 0)
        printf("NVRAM: none (not an nvtpm image; its qcow2 structure was checked)\n");
    if (res->leaks_fixed)
        printf("Repaired %llu leaked clusters.\n", (unsigned long long)res->leaks_fixed);
    if (!res->corruptions && res->leaks <= res->leaks_fixed && !v->nerrors)
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

static int run_check(const char *img, const char *format, bool repair, bool json,
                     const struct nvram_key *key);

int cmd_check(int argc, char **argv)
{
    static const struct option opts[] = {{"repair", no_argument, NULL, 'r'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"key", required_argument, NULL, 'k'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    bool repair = false, json = false, have_key = false;
    struct nvram_key key;
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
        case 'k':
            if (have_key)
                return cli_fail(CLI_EXIT_USAGE, "check: --key given twice");
            if (cli_parse_key("--key", optarg, &key) != 0)
                return CHECK_ERROR;
            have_key = true;
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
    int status = 0;
    const char *img = cli_one_image("check", argc, argv, &status);
    if (img)
        status = run_check(img, format, repair, json, have_key ? &key : NULL);
    if (have_key)
        nvram_key_wipe(&key);
    return status;
}

static int run_check(const char *img, const char *format, bool repair, bool json,
                     const struct nvram_key *key)
{
    struct nv_error err = {0};
    struct bdrv_node *bs =
        bdrv_open_format(format, img, repair ? BDRV_O_RDWR | BDRV_O_OWNER : 0, NULL, &err);
    if (!bs) /* damage the open itself finds (a table outside the file) is corruption */
        return cli_fail(err.code == -EUCLEAN ? CHECK_CORRUPT : CHECK_ERROR, "%s", err.msg);
    struct bdrv_check_result res;
    struct nvram_verdict verdict = {.state = "unchecked"};
    /* Shared: a server's commits (exclusive) never interleave with the check. */
    int r = bdrv_lock(bs, repair ? BDRV_LOCK_EXCLUSIVE : BDRV_LOCK_SHARED, 10000, &err);
    if (r == 0)
        r = bdrv_check(bs, &res, repair, &err);
    if (r == 0 && !res.corruptions)
        check_nvram(bs, key, &verdict, &err);
    bdrv_close(bs);
    if (r < 0)
        return cli_fail(CHECK_ERROR, "%s", err.msg);
    int status = res.corruptions || verdict.nerrors ? CHECK_CORRUPT
                 : res.leaks > res.leaks_fixed      ? CHECK_LEAKS
                                                    : CHECK_CLEAN;
    if (json)
        print_json(img, &res, &verdict, status);
    else
        print_text(&res, &verdict);
    return status;
}
