/* cmd-validate.c - `nvtpm validate IMG`: the migration dry run's command line.
 * The checks are tpm_validate's (tpm/validate.c); here the options, the text
 * or --json report and one exit code per outcome. */
#include <getopt.h>
#include <stdio.h>

#include "cli.h"
#include "json.h"
#include "tpm.h"

static const char validate_usage[] =
    "Usage: nvtpm validate IMG [--key KEY] [--tpm2|--tpm1.2] [--wait SECONDS] [--json]\n"
    "                          [--blobs DIR [--migration-key KEY]]\n"
    "\n"
    "The migration dry run: can this host load the TPM state in IMG, with this key,\n"
    "right now? Opens IMG read-only under the shared access lock (it runs beside the\n"
    "server that owns the image) and checks, each by name: the lock, the qcow2\n"
    "structure (as nvtpm check), what the server's read-write open would refuse\n"
    "(the dirty or corrupt bit, a file this user cannot write), the NVRAM\n"
    "superblock, the key, every blob slot (each current blob decrypts and\n"
    "authenticates), the TPM version, and that libtpms on this host accepts the\n"
    "state (TPMLIB_ValidateState). Never writes.\n"
    "\n"
    "  --key KEY          the image's key (see nvtpm create --help)\n"
    "  --tpm2, --tpm1.2   the TPM version the state must be\n"
    "  --wait SECONDS     wait this long for the access lock while a server commits\n"
    "                     (default 10)\n"
    "  --json             every check as JSON\n"
    "  --blobs DIR        validate incoming blobs instead of the image's state: swtpm's\n"
    "                     state files (tpm2-00.permall, tpm2-00.volatilestate,\n"
    "                     tpm2-00.savestate; tpm-00.* for TPM 1.2) or blobs saved with\n"
    "                     GET_STATEBLOB (permanent, volatile, savestate); encrypted ones\n"
    "                     need --migration-key (and --key for swtpm's state key)\n"
    "\n"
    "Exit codes: 0 loadable, 1 usage, 2 corrupt, 4 key missing, 5 key wrong,\n"
    "6 key given for a plain image, 7 busy (no lock in time), 8 not loadable here\n"
    "(TPM version, libtpms), 9 other errors.\n";

struct options {
    const char *img, *blobs_dir;
    struct nvram_key key, migration_key;
    bool have_key, have_migration_key, json;
    int tpm_version;
    int wait_ms;
};

static const char *status(int err)
{
    return err ? "failed" : "ok";
}

static void print_text(const char *img, const struct tpm_validation *v)
{
    for (int i = 0; i < v->n; i++)
        printf("%-7s %-12s %s\n", status(v->checks[i].err), v->checks[i].name,
               v->checks[i].message);
    if (v->err == 0)
        printf("%s: loadable here\n", img);
}

static void print_json(const char *img, const struct tpm_validation *v, int code)
{
    json_object *root = json_object_new_object(), *checks = json_object_new_array();
    json_object_object_add(root, "image", json_object_new_string(img));
    json_object_object_add(root, "loadable", json_object_new_boolean(code == 0));
    json_object_object_add(root, "exit-code", json_object_new_int(code));
    for (int i = 0; i < v->n; i++) {
        json_object *c = json_object_new_object();
        json_object_object_add(c, "name", json_object_new_string(v->checks[i].name));
        json_object_object_add(c, "status", json_object_new_string(status(v->checks[i].err)));
        json_object_object_add(c, "message", json_object_new_string(v->checks[i].message));
        json_object_array_add(checks, c);
    }
    json_object_object_add(root, "checks", checks);
    printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY));
    json_object_put(root);
}

static int parse(int argc, char **argv, struct options *o)
{
    enum { O_KEY = 256, O_MIGKEY, O_TPM2, O_TPM12, O_WAIT, O_JSON, O_BLOBS };
    static const struct option longopts[] = {{"key", required_argument, NULL, O_KEY},
                                             {"migration-key", required_argument, NULL, O_MIGKEY},
                                             {"tpm2", no_argument, NULL, O_TPM2},
                                             {"tpm1.2", no_argument, NULL, O_TPM12},
                                             {"wait", required_argument, NULL, O_WAIT},
                                             {"json", no_argument, NULL, O_JSON},
                                             {"blobs", required_argument, NULL, O_BLOBS},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    int c, r = 0;
    uint64_t secs;
    opterr = 0;
    while (r == 0 && (c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (c == 'h')
            return fputs(validate_usage, stdout), -1;
        if (c == O_KEY && !o->have_key)
            o->have_key = (r = cli_parse_key("--key", optarg, &o->key)) == 0;
        else if (c == O_MIGKEY && !o->have_migration_key)
            o->have_migration_key =
                (r = cli_parse_key("--migration-key", optarg, &o->migration_key)) == 0;
        else if ((c == O_TPM2 || c == O_TPM12) && !o->tpm_version)
            o->tpm_version = c == O_TPM2 ? 2 : 1;
        else if (c == O_WAIT && nv_parse_u64(optarg, 3600, &secs) == 0)
            o->wait_ms = (int)secs * 1000;
        else if (c == O_JSON)
            o->json = true;
        else if (c == O_BLOBS)
            o->blobs_dir = optarg;
        else
            r = cli_usage_error("validate", argv[optind - 1]);
    }
    if (r == 0 && optind + 1 != argc)
        r = cli_fail(CLI_EXIT_USAGE, "validate: give one image (nvtpm validate IMG [options])");
    if (r == 0 && o->have_migration_key && !o->blobs_dir)
        r = cli_fail(CLI_EXIT_USAGE, "validate: --migration-key is for --blobs");
    o->img = r == 0 ? argv[optind] : NULL;
    return r;
}

int cmd_validate(int argc, char **argv)
{
    struct options o = {.wait_ms = 10000};
    int r = parse(argc, argv, &o);
    if (r == 0) {
        struct tpm_validate_options vo = {.img = o.img,
                                          .key = o.have_key ? &o.key : NULL,
                                          .tpm_version = o.tpm_version,
                                          .wait_ms = o.wait_ms,
                                          .blobs_dir = o.blobs_dir,
                                          .migration_key =
                                              o.have_migration_key ? &o.migration_key : NULL};
        struct tpm_validation v;
        if (tpm_validate(&vo, &v) != 0) {
            struct nv_error failure = {.code = v.err, .status = v.status};
            r = cli_exit_code(&failure, v.err);
        }
        if (o.json)
            print_json(o.img, &v, r);
        else
            print_text(o.img, &v);
        if (r && !o.json)
            for (int i = 0; i < v.n; i++)
                if (v.checks[i].err)
                    cli_fail(r, "validate: %s: %s: %s", o.img, v.checks[i].name,
                             v.checks[i].message);
    }
    nvram_key_wipe(&o.key);
    nvram_key_wipe(&o.migration_key);
    return r < 0 ? 0 : r;
}
