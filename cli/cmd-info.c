/* cmd-info.c - `nvtpm info IMG [--json] [--key KEY]` and `nvtpm key list`:
 * what an image holds, read-only, without ownership and without secrets. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "block.h"
#include "cli.h"
#include "json.h"
#include "nvram.h"

#define MAX_HOLDERS 16

static const char info_usage[] =
    "Usage: nvtpm info IMG [--json] [--key KEY]\n"
    "\n"
    "Show the image's format and size, its NVRAM (format, TPM version, UUID),\n"
    "encryption and key slots (no secrets), each blob's current slot, sequence\n"
    "and size, and the processes holding locks on it. Read-only: works beside a\n"
    "running server. With --key, encrypted slots are authenticated too.\n"
    "JSON fields: see docs/nvtpm-info.md.\n";

static const char *slot_state(enum nvram_slot_state s)
{
    static const char *const names[] = {"blank", "valid", "damaged", "unchecked"};
    return names[s];
}

static json_object *slot_json(const struct nvram_slot_info *si, char which)
{
    json_object *o = json_object_new_object();
    char name[2] = {which, 0};
    json_object_object_add(o, "slot", json_object_new_string(name));
    json_object_object_add(o, "state", json_object_new_string(slot_state(si->state)));
    if (si->state != NVRAM_SLOT_BLANK) {
        json_object_object_add(o, "sequence", json_object_new_int64((int64_t)si->sequence));
        json_object_object_add(o, "length", json_object_new_int64(si->length));
        json_object_object_add(o, "cipher", json_object_new_string(nvram_cipher_name(si->cipher)));
        json_object_object_add(o, "deleted", json_object_new_boolean(si->deleted));
    }
    if (si->problem[0])
        json_object_object_add(o, "problem", json_object_new_string(si->problem));
    return o;
}

static json_object *keys_json(const struct nvram_info *info)
{
    json_object *a = json_object_new_array();
    for (int k = 0; k < NVRAM_KEY_SLOTS; k++) {
        if (!info->keys[k].used)
            continue;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "index", json_object_new_int(k));
        json_object_object_add(
            o, "kind",
            json_object_new_string(info->keys[k].kind == NVRAM_KEY_RAW ? "raw-key" : "passphrase"));
        json_object_object_add(o, "kek-bits", json_object_new_int((int)info->keys[k].kek_size * 8));
        if (info->keys[k].kind == NVRAM_KEY_PASSPHRASE)
            json_object_object_add(o, "pbkdf2-sha512-iterations",
                                   json_object_new_int64(info->keys[k].iterations));
        json_object_object_add(o, "created", json_object_new_int64((int64_t)info->keys[k].created));
        json_object_array_add(a, o);
    }
    return a;
}

static json_object *nvram_json(const struct nvram_info *info)
{
    char uuid[37];
    json_object *o = json_object_new_object(), *blobs = json_object_new_array();
    nvram_uuid_string(info->uuid, uuid);
    json_object_object_add(o, "format-version", json_object_new_int(1));
    json_object_object_add(o, "tpm-version",
                           json_object_new_string(info->tpm_version == 2 ? "2.0" : "1.2"));
    json_object_object_add(o, "uuid", json_object_new_string(uuid));
    json_object_object_add(o, "generation", json_object_new_int64((int64_t)info->generation));
    json_object_object_add(o, "cipher", json_object_new_string(nvram_cipher_name(info->cipher)));
    json_object_object_add(o, "encrypting", json_object_new_boolean(info->encrypting));
    json_object *sbs = json_object_new_array();
    for (int i = 0; i < 2; i++)
        json_object_array_add(sbs, json_object_new_boolean(info->superblock_valid[i]));
    json_object_object_add(o, "superblocks-valid", sbs);
    json_object_object_add(o, "key-slots", keys_json(info));
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        json_object *bo = json_object_new_object(), *slots = json_object_new_array();
        int cur = info->blobs[b].current;
        json_object_object_add(bo, "name", json_object_new_string(nvram_blob_name(b)));
        json_object_object_add(bo, "capacity", json_object_new_int64(info->blobs[b].capacity));
        json_object_object_add(bo, "current",
                               cur < 0 ? NULL : json_object_new_string(cur ? "B" : "A"));
        bool present = cur >= 0 && !info->blobs[b].slot[cur].deleted;
        json_object_object_add(bo, "present", json_object_new_boolean(present));
        if (present) {
            json_object_object_add(
                bo, "sequence", json_object_new_int64((int64_t)info->blobs[b].slot[cur].sequence));
            json_object_object_add(bo, "length",
                                   json_object_new_int64(info->blobs[b].slot[cur].length));
        }
        for (int s = 0; s < 2; s++)
            json_object_array_add(slots, slot_json(&info->blobs[b].slot[s], (char)('A' + s)));
        json_object_object_add(bo, "slots", slots);
        json_object_array_add(blobs, bo);
    }
    json_object_object_add(o, "blobs", blobs);
    return o;
}

static json_object *holders_json(const struct bdrv_lock_holder *h, size_t n)
{
    static const char *const perms[] = {"consistent-read", "write", "write-unchanged", "resize",
                                        "change-children"};
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object *o = json_object_new_object(), *p = json_object_new_array(),
                    *u = json_object_new_array();
        json_object_object_add(o, "pid", json_object_new_int(h[i].pid));
        json_object_object_add(o, "name", json_object_new_string(h[i].name));
        json_object_object_add(o, "owner", json_object_new_boolean(h[i].qemu_perm & 2));
        for (int b = 0; b < 5; b++) {
            if (h[i].qemu_perm & (1u << b))
                json_object_array_add(p, json_object_new_string(perms[b]));
            if (h[i].qemu_unshare & (1u << b))
                json_object_array_add(u, json_object_new_string(perms[b]));
        }
        json_object_object_add(o, "permissions", p);
        json_object_object_add(o, "unshared", u);
        json_object_object_add(o, "access-lock",
                               json_object_new_string(h[i].access == 2   ? "exclusive"
                                                      : h[i].access == 1 ? "shared"
                                                                         : "none"));
        json_object_array_add(a, o);
    }
    return a;
}

static void print_keys(const struct nvram_info *info)
{
    for (int k = 0; k < NVRAM_KEY_SLOTS; k++) {
        if (!info->keys[k].used)
            continue;
        char when[32];
        time_t t = (time_t)info->keys[k].created;
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", gmtime(&t));
        if (info->keys[k].kind == NVRAM_KEY_RAW)
            printf("  key slot %d: %u-bit raw key, created %s\n", k, info->keys[k].kek_size * 8,
                   when);
        else
            printf("  key slot %d: passphrase (PBKDF2-HMAC-SHA512, %u iterations), created %s\n", k,
                   info->keys[k].iterations, when);
    }
}

static void print_nvram(const struct nvram_info *info)
{
    char uuid[37];
    nvram_uuid_string(info->uuid, uuid);
    printf("nvram: format 1, TPM %s, uuid %s, generation %llu\n",
           info->tpm_version == 2 ? "2.0" : "1.2", uuid, (unsigned long long)info->generation);
    printf("superblocks: copy 0 %s, copy 1 %s\n", info->superblock_valid[0] ? "valid" : "DAMAGED",
           info->superblock_valid[1] ? "valid" : "DAMAGED");
    printf("encryption: %s%s\n", nvram_cipher_name(info->cipher),
           info->encrypting ? " (an nvtpm encrypt was interrupted; run it again)" : "");
    print_keys(info);
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        int cur = info->blobs[b].current;
        const struct nvram_slot_info *s = cur >= 0 ? &info->blobs[b].slot[cur] : NULL;
        printf("blob %-13s ", nvram_blob_name(b));
        if (!s)
            printf("absent");
        else if (s->deleted)
            printf("deleted (slot %c, sequence %llu)", 'A' + cur, (unsigned long long)s->sequence);
        else
            printf("%u bytes in slot %c, sequence %llu", s->length, 'A' + cur,
                   (unsigned long long)s->sequence);
        printf(" (capacity %u)\n", info->blobs[b].capacity);
        for (int i = 0; i < 2; i++)
            if (info->blobs[b].slot[i].state == NVRAM_SLOT_DAMAGED)
                printf("  slot %c is damaged: %s\n", 'A' + i, info->blobs[b].slot[i].problem);
    }
}

static void print_holders(const struct bdrv_lock_holder *h, size_t n)
{
    size_t others = 0;
    for (size_t i = 0; i < n; i++) {
        if (h[i].self)
            continue; /* our own read-only look at the image */
        others++;
        printf("lock holder: pid %d (%s)%s%s%s\n", h[i].pid, h[i].name,
               (h[i].qemu_perm & 2) ? ", owner (QEMU write lock)" : ", reader",
               h[i].access ? (h[i].access == 2 ? ", access lock exclusive" : ", access lock shared")
                           : "",
               "");
    }
    if (!others)
        printf("locks: none held by other processes\n");
}

/* info and key list share this: open read-only, inspect, print. */
static int show(const char *img, const struct nvram_key *key, bool json, bool keys_only)
{
    struct nv_error err = {0};
    struct bdrv_node *bs = bdrv_open(img, 0, NULL, &err);
    if (!bs)
        return cli_fail(cli_exit_code(&err, err.code), "%s", err.msg);
    struct nvram_info info;
    struct bdrv_lock_holder holders[MAX_HOLDERS];
    size_t nholders = 0;
    int r = nvram_inspect(bs, key, 0, &info, &err);
    bdrv_lock_holders(bs, holders, MAX_HOLDERS, &nholders, NULL);
    int64_t size = bdrv_getlength(bs, NULL);
    const char *format = bdrv_format_name(bs);
    if (json) {
        json_object *o = keys_only ? keys_json(&info) : json_object_new_object();
        if (!keys_only) {
            json_object_object_add(o, "filename", json_object_new_string(img));
            json_object_object_add(o, "format", json_object_new_string(format));
            json_object_object_add(o, "virtual-size", json_object_new_int64(size));
            json_object_object_add(o, "nvram", r == 0 ? nvram_json(&info) : NULL);
            if (r < 0)
                json_object_object_add(o, "error", json_object_new_string(err.msg));
            json_object_object_add(o, "lock-holders", holders_json(holders, nholders));
        }
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
        json_object_put(o);
    } else if (keys_only) {
        if (r == 0 && info.cipher == NVRAM_CIPHER_NONE)
            printf("%s is not encrypted: no key slots\n", img);
        if (r == 0)
            print_keys(&info);
    } else {
        printf("image: %s\nformat: %s, virtual size %lld bytes\n", img, format, (long long)size);
        if (r == 0)
            print_nvram(&info);
        print_holders(holders, nholders);
    }
    bdrv_close(bs);
    return r < 0 ? cli_fail(cli_exit_code(&err, r), "%s", err.msg) : CLI_EXIT_OK;
}

int cmd_info_keys(const char *img, bool json)
{
    return show(img, NULL, json, true);
}

int cmd_info(int argc, char **argv)
{
    static const struct option lo[] = {{"json", no_argument, NULL, 'j'},
                                       {"key", required_argument, NULL, 'k'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    struct nvram_key key;
    bool json = false, have_key = false;
    int c, r = 0;
    optind = 1;
    opterr = 0;
    while (r == 0 && (c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        if (c == 'j')
            json = true;
        else if (c == 'k' && !have_key)
            have_key = (r = cli_parse_key("--key", optarg, &key)) == 0;
        else if (c == 'h')
            return fputs(info_usage, stdout), 0;
        else
            r = cli_usage_error("info", argv[optind - 1]);
    }
    const char *img = cli_one_image("info", argc, argv, &r);
    if (img)
        r = show(img, have_key ? &key : NULL, json, false);
    if (have_key)
        nvram_key_wipe(&key);
    return r;
}
