/* keys.c - user keys: parsing swtpm's --key syntax and reading the key
 * material, and key slots: wrapping the data key under a key-encryption key. */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define KEY_FILE_MAX (NVRAM_PASSPHRASE_MAX + 1)

struct key_spec {
    const char *file, *fd, *pwdfile, *pwdfd, *format, *mode, *kdf, *iterations;
    bool remove;
};

static int read_all(int fd, uint8_t *buf, size_t cap, size_t *len)
{
    *len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + *len, cap - *len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return 0;
        *len += (size_t)n;
        if (*len == cap)
            return -EFBIG;
    }
}

/* Split "name=value,name,..." into the spec; unknown names are errors. */
static int parse_spec(char *text, struct key_spec *ks, struct nv_error *err)
{
    struct {
        const char *name;
        const char **slot;
    } fields[] = {{"file", &ks->file},       {"fd", &ks->fd},
                  {"pwdfile", &ks->pwdfile}, {"pwdfd", &ks->pwdfd},
                  {"format", &ks->format},   {"mode", &ks->mode},
                  {"kdf", &ks->kdf},         {"iterations", &ks->iterations}};
    for (char *save = NULL, *tok = strtok_r(text, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (strcmp(tok, "remove") == 0 || strcmp(tok, "remove=true") == 0 ||
            strcmp(tok, "remove=false") == 0) { /* swtpm takes remove[=true|false] */
            ks->remove = strcmp(tok, "remove=false") != 0;
            continue;
        }
        size_t i, n = sizeof(fields) / sizeof(fields[0]);
        for (i = 0; eq && i < n; i++)
            if ((size_t)(eq - tok) == strlen(fields[i].name) &&
                strncmp(tok, fields[i].name, (size_t)(eq - tok)) == 0)
                break;
        if (!eq || i == n)
            return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL, "key: unknown option '%s'",
                                       tok);
        *fields[i].slot = eq + 1;
    }
    int sources = !!ks->file + !!ks->fd + !!ks->pwdfile + !!ks->pwdfd;
    if (sources != 1)
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                   "key: give exactly one of file=, fd=, pwdfile= or pwdfd=");
    return 0;
}

static int read_source(const char *path, const char *fd_text, bool remove, uint8_t *buf,
                       size_t *len, struct nv_error *err)
{
    int fd;
    if (path) {
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return nv_error_set(err, -errno, "key file %s: %s", path, strerror(errno));
    } else {
        uint64_t n;
        if (nv_parse_u64(fd_text, 1u << 30, &n) < 0)
            return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                       "key: fd=%s is not a descriptor number", fd_text);
        fd = (int)n;
    }
    int r = read_all(fd, buf, KEY_FILE_MAX, len);
    close(fd);
    if (r == -EFBIG)
        return nv_error_set(err, r, "key %s: longer than %d bytes", path ? path : fd_text,
                            NVRAM_PASSPHRASE_MAX);
    if (r < 0)
        return nv_error_set(err, r, "key %s: %s", path ? path : fd_text, strerror(-r));
    if (remove && path && unlink(path) < 0)
        return nv_error_set(err, -errno, "key file %s: cannot remove it: %s", path,
                            strerror(errno));
    return 0;
}

static int hex_value(int c)
{
    return isdigit(c)               ? c - '0'
           : (c >= 'a' && c <= 'f') ? c - 'a' + 10
           : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                    : -1;
}

/* A raw key: hex digits (whitespace around them allowed) or bytes. */
static int decode_raw(struct nvram_key *key, const uint8_t *buf, size_t len, const char *format,
                      const char *mode, struct nv_error *err)
{
    if (!format || strcmp(format, "hex") == 0) {
        size_t start = 0, end = len, n = 0;
        while (start < end && isspace(buf[start]))
            start++;
        while (end > start && isspace(buf[end - 1]))
            end--;
        if ((end - start) % 2)
            return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                       "key: odd number of hex digits");
        for (size_t i = start; i < end; i += 2) {
            int hi = hex_value(buf[i]), lo = hex_value(buf[i + 1]);
            if (hi < 0 || lo < 0 || n == sizeof(key->material))
                return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                           "key: not a hex key (byte %zu)", i);
            key->material[n++] = (uint8_t)(hi << 4 | lo);
        }
        key->length = n;
    } else if (strcmp(format, "binary") == 0) {
        memcpy(key->material, buf, len);
        key->length = len;
    } else {
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL, "key: format=%s (hex or binary)",
                                   format);
    }
    if (key->length != 16 && key->length != 32)
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                   "key: %zu bits; a key has 128 or 256 bits", key->length * 8);
    if (mode && !((strcmp(mode, "aes-cbc") == 0 && key->length == 16) ||
                  (strcmp(mode, "aes-256-cbc") == 0 && key->length == 32)))
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                   "key: mode=%s does not fit a %zu-bit key", mode,
                                   key->length * 8);
    return 0;
}

int nvram_key_parse(const char *spec, struct nvram_key *key, struct nv_error *err)
{
    struct key_spec ks = {0};
    char text[1024];
    uint8_t buf[KEY_FILE_MAX];
    size_t len = 0;
    memset(key, 0, sizeof(*key));
    if (snprintf(text, sizeof(text), "%s", spec) >= (int)sizeof(text))
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL, "key: option too long");
    int r = parse_spec(text, &ks, err);
    key->iterations = NVRAM_DEFAULT_ITERATIONS;
    if (r == 0 && ks.iterations) {
        uint64_t n;
        if (nv_parse_u64(ks.iterations, UINT32_MAX, &n) < 0 || n < NVRAM_MIN_ITERATIONS)
            r = nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                    "key: iterations=%s (at least %u)", ks.iterations,
                                    NVRAM_MIN_ITERATIONS);
        key->iterations = (uint32_t)n;
    }
    if (r == 0 && ks.kdf && strcmp(ks.kdf, "pbkdf2") != 0 && strcmp(ks.kdf, "sha512") != 0)
        r = nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL, "key: kdf=%s (pbkdf2 or sha512)",
                                ks.kdf);
    key->kdf_sha512 = ks.kdf && strcmp(ks.kdf, "sha512") == 0;
    bool passphrase = ks.pwdfile || ks.pwdfd;
    if (r == 0)
        r = read_source(passphrase ? ks.pwdfile : ks.file, passphrase ? ks.pwdfd : ks.fd, ks.remove,
                        buf, &len, err);
    if (r == 0 && passphrase) {
        if (len == 0)
            r = nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL, "key: the passphrase is empty");
        key->kind = NVRAM_KEY_PASSPHRASE;
        memcpy(key->material, buf, len);
        key->length = len;
        key->cbc_bytes = ks.mode && strcmp(ks.mode, "aes-256-cbc") == 0 ? 32 : 16;
        if (ks.mode && strcmp(ks.mode, "aes-cbc") != 0 && strcmp(ks.mode, "aes-256-cbc") != 0)
            r = nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                    "key: mode=%s (aes-cbc or aes-256-cbc)", ks.mode);
    } else if (r == 0) {
        key->kind = NVRAM_KEY_RAW;
        r = decode_raw(key, buf, len, ks.format, ks.mode, err);
    }
    nv_wipe(buf, sizeof(buf));
    nv_wipe(text, sizeof(text));
    if (r < 0)
        nvram_key_wipe(key);
    return r;
}

int nvram_key_swtpm_aes(const struct nvram_key *key, uint8_t out[32], size_t *out_len,
                        struct nv_error *err)
{
    static const uint8_t salt[] = "swtpm";
    if (key->kind == NVRAM_KEY_RAW) {
        memcpy(out, key->material, key->length);
        *out_len = key->length;
        return 0;
    }
    *out_len = key->cbc_bytes;
    if (key->kdf_sha512) {
        uint8_t digest[64];
        int r = nvram_sha512(key->material, key->length, digest);
        memcpy(out, digest, *out_len);
        nv_wipe(digest, sizeof(digest));
        return r < 0 ? nv_error_set(err, r, "key: SHA-512 failed") : 0;
    }
    if (nvram_pbkdf2(key->material, key->length, salt, sizeof(salt) - 1, 1000, out, *out_len) < 0)
        return nv_error_set(err, -EIO, "key: PBKDF2 failed");
    return 0;
}

void nvram_key_wipe(struct nvram_key *key)
{
    nv_wipe(key, sizeof(*key));
}

/* ---- key slots --------------------------------------------------------------------- */

static void wrap_aad(uint8_t aad[31], const uint8_t uuid[16], unsigned index)
{
    memcpy(aad, "nvtpm key slot", 14);
    memcpy(aad + 14, uuid, 16);
    aad[30] = (uint8_t)index;
}

static int derive_kek(const struct nvram_keyslot *slot, const struct nvram_key *key,
                      uint8_t kek[32])
{
    if (key->kind == NVRAM_KEY_RAW) {
        if (key->length != slot->kek_size)
            return -EKEYREJECTED;
        memcpy(kek, key->material, key->length);
        return 0;
    }
    return nvram_pbkdf2(key->material, key->length, slot->salt, sizeof(slot->salt),
                        slot->iterations, kek, slot->kek_size) < 0
               ? -EIO
               : 0;
}

int nvram_keyslot_fill(struct nvram_keyslot *slot, const struct nvram_key *key,
                       const uint8_t uuid[16], unsigned index, const uint8_t *data_key,
                       size_t data_key_len, struct nv_error *err)
{
    uint8_t kek[32], aad[31];
    memset(slot, 0, sizeof(*slot));
    slot->used = 1;
    slot->kind = (uint8_t)key->kind;
    slot->kek_size = key->kind == NVRAM_KEY_RAW ? (uint8_t)key->length : 32;
    slot->iterations = key->kind == NVRAM_KEY_PASSPHRASE ? key->iterations : 0;
    slot->created = (uint64_t)time(NULL);
    wrap_aad(aad, uuid, index);
    int r = nvram_random(slot->salt, sizeof(slot->salt));
    if (r == 0)
        r = nvram_random(slot->nonce, sizeof(slot->nonce));
    if (r == 0)
        r = derive_kek(slot, key, kek);
    if (r == 0)
        r = nvram_gcm_seal(kek, slot->kek_size, slot->nonce, aad, sizeof(aad), data_key,
                           data_key_len, slot->wrapped, slot->tag);
    nv_wipe(kek, sizeof(kek));
    if (key->kind == NVRAM_KEY_RAW)
        memset(slot->salt, 0, sizeof(slot->salt));
    return r < 0 ? nv_error_set(err, r, "cannot wrap the data key for key slot %u", index) : 0;
}

int nvram_keyslot_open(const struct nvram_keyslot *slot, const struct nvram_key *key,
                       const uint8_t uuid[16], unsigned index, uint8_t *data_key,
                       size_t data_key_len)
{
    uint8_t kek[32], aad[31];
    if (!slot->used || (key->kind == NVRAM_KEY_RAW) != (slot->kind == NVRAM_KEY_RAW))
        return -EKEYREJECTED;
    wrap_aad(aad, uuid, index);
    int r = derive_kek(slot, key, kek);
    if (r == 0)
        r = nvram_gcm_open(kek, slot->kek_size, slot->nonce, aad, sizeof(aad), slot->wrapped,
                           data_key_len, data_key, slot->tag) < 0
                ? -EKEYREJECTED
                : 0;
    nv_wipe(kek, sizeof(kek));
    return r;
}

int nvram_keys_unlock(const struct nvram_super *sb, const struct nvram_key *key, uint8_t *data_key)
{
    size_t len = nvram_data_key_size(sb->cipher);
    for (unsigned i = 0; i < NVRAM_KEY_SLOTS; i++)
        if (nvram_keyslot_open(&sb->keys[i], key, sb->uuid, i, data_key, len) == 0)
            return (int)i;
    return -EKEYREJECTED;
}
