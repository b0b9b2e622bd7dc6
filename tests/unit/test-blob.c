/* test-blob.c - swtpm's state-blob format (migration/): plain and encrypted
 * round trips at every padding length, swtpm's padding rule checked on the
 * decrypted bytes, and every refusal: no key, a wrong key, a key of the
 * wrong size, a flipped byte, a truncated blob. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "migration.h"

static const struct mig_key key128 = {.aes = "0123456789abcdef", .len = 16};
static const struct mig_key key256 = {.aes = "0123456789abcdef0123456789abcdef", .len = 32};
static const struct mig_key wrong128 = {.aes = "fedcba9876543210", .len = 16};

static void fill(uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(i * 7 + 3);
}

/* TLV tag's value inside the blob's TLVs (after the header). */
static const uint8_t *tlv(const uint8_t *blob, size_t len, uint16_t tag, size_t *vlen)
{
    for (size_t off = 10; off + 6 <= len;) {
        uint16_t t = (uint16_t)(blob[off] << 8 | blob[off + 1]);
        uint32_t l = (uint32_t)blob[off + 2] << 24 | (uint32_t)blob[off + 3] << 16 |
                     (uint32_t)blob[off + 4] << 8 | blob[off + 5];
        if (t == tag) {
            *vlen = l;
            return blob + off + 6;
        }
        off += 6 + l;
    }
    return NULL;
}

/* Rule (swtpm): the plaintext, a data TLV, is padded to a multiple of the key
 * length with bytes that each hold the padding's length (up to 32). */
static void check_padding(const struct mig_key *key, const uint8_t *blob, size_t blob_len,
                          size_t state_len)
{
    size_t ct_len, iv_len;
    const uint8_t *ct = tlv(blob, blob_len, MIG_TAG_ENCRYPTED_MIGRATION_DATA, &ct_len);
    const uint8_t *iv = tlv(blob, blob_len, MIG_TAG_MIGRATION_IVEC, &iv_len);
    assert_non_null(ct);
    assert_non_null(iv);
    assert_int_equal(iv_len, key->len);
    assert_int_equal(ct_len % key->len, 0);
    uint8_t *plain = malloc(ct_len);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, tail = 0;
    assert_int_equal(EVP_DecryptInit_ex(ctx, key->len == 32 ? EVP_aes_256_cbc() : EVP_aes_128_cbc(),
                                        NULL, key->aes, iv),
                     1);
    EVP_CIPHER_CTX_set_padding(ctx, 0);
    assert_int_equal(EVP_DecryptUpdate(ctx, plain, &n, ct, (int)ct_len), 1);
    assert_int_equal(EVP_DecryptFinal_ex(ctx, plain + n, &tail), 1);
    EVP_CIPHER_CTX_free(ctx);
    size_t pad = key->len - (6 + state_len) % key->len;
    assert_int_equal(ct_len, 6 + state_len + pad);
    for (size_t i = ct_len - pad; i < ct_len; i++)
        assert_int_equal(plain[i], pad);
    assert_int_equal(plain[1], MIG_TAG_DATA);
    free(plain);
}

static void round_trip(const struct mig_key *key, size_t len)
{
    uint8_t state[128], *blob = NULL, *back = NULL;
    size_t blob_len = 0, back_len = 0;
    fill(state, len);
    assert_int_equal(mig_blob_wrap(state, len, key, NULL, &blob, &blob_len, NULL), 0);
    uint16_t flags = (uint16_t)(blob[4] << 8 | blob[5]);
    assert_int_equal(flags, key ? (key->len == 32 ? 0x16 : 0x06) : 0x04);
    if (key)
        check_padding(key, blob, blob_len, len);
    assert_int_equal(mig_blob_unwrap(blob, blob_len, key, NULL, &back, &back_len, NULL), 0);
    assert_int_equal(back_len, len);
    assert_memory_equal(back, state, len);
    free(back);
    free(blob);
}

static void test_round_trips(void **state)
{
    (void)state;
    for (size_t len = 0; len <= 80; len++) {
        round_trip(NULL, len);
        round_trip(&key128, len);
        round_trip(&key256, len);
    }
}

static void expect_refusal(const uint8_t *blob, size_t len, const struct mig_key *mk,
                           const struct mig_key *sk, int code, const char *words)
{
    struct nv_error err = {0};
    uint8_t *out = (uint8_t *)"untouched";
    size_t out_len = 99;
    assert_int_equal(mig_blob_unwrap(blob, len, mk, sk, &out, &out_len, &err), code);
    assert_null(out);
    assert_int_equal(out_len, 0);
    if (!strstr(err.msg, words))
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, words);
}

static void test_refusals(void **state)
{
    (void)state;
    uint8_t data[40], *blob, *big;
    size_t len, big_len;
    fill(data, sizeof(data));
    assert_int_equal(mig_blob_wrap(data, sizeof(data), &key128, NULL, &blob, &len, NULL), 0);
    assert_int_equal(mig_blob_wrap(data, sizeof(data), &key256, NULL, &big, &big_len, NULL), 0);
    /* Rule: no migration key, swtpm's TPM_KEYNOTFOUND. */
    expect_refusal(blob, len, NULL, NULL, -ENOKEY, "migration key, none given");
    /* Rule: a wrong key fails the HMAC, before decryption. */
    expect_refusal(blob, len, &wrong128, NULL, -EKEYREJECTED, "HMAC does not match");
    /* Rule: the header's key size must be the given key's. */
    expect_refusal(big, big_len, &key128, NULL, -EKEYREJECTED, "256-bit");
    expect_refusal(blob, len, &key256, NULL, -EKEYREJECTED, "128-bit");
    /* Rule: any changed byte after the first TLV's header is refused. */
    for (size_t i = 16; i < len; i += 7) {
        blob[i] ^= 0x40;
        struct nv_error err = {0};
        uint8_t *out = NULL;
        size_t out_len = 0;
        int r = mig_blob_unwrap(blob, len, &key128, NULL, &out, &out_len, &err);
        assert_true(r == -EKEYREJECTED || r == -EBADMSG);
        assert_null(out);
        blob[i] ^= 0x40;
    }
    /* Rule: a truncated blob does not fit its header's total length. */
    expect_refusal(blob, len - 1, &key128, NULL, -EBADMSG, "total length");
    free(blob);
    free(big);
}

/* Rule (swtpm): a plain blob loads into a server that has a migration key. */
static void test_plain_with_key(void **state)
{
    (void)state;
    uint8_t data[20], *blob, *back;
    size_t len, back_len;
    fill(data, sizeof(data));
    assert_int_equal(mig_blob_wrap(data, sizeof(data), NULL, NULL, &blob, &len, NULL), 0);
    assert_int_equal(mig_blob_unwrap(blob, len, &key128, &key256, &back, &back_len, NULL), 0);
    assert_int_equal(back_len, sizeof(data));
    assert_memory_equal(back, data, sizeof(data));
    free(back);
    free(blob);
}

/* Rule (swtpm): flag 0x01 (state key) needs the state key and its TLVs
 * 2/3/6. (Decrypting swtpm's real state-key blobs is tested against swtpm in
 * tests/tpm/test-migration-key.sh.) */
static void test_state_key_layer(void **state)
{
    (void)state;
    uint8_t data[33], *blob;
    size_t len;
    fill(data, sizeof(data));
    assert_int_equal(mig_blob_wrap(data, sizeof(data), NULL, NULL, &blob, &len, NULL), 0);
    blob[5] |= 0x01; /* claims the state key; holds a plain data TLV */
    expect_refusal(blob, len, NULL, NULL, -ENOKEY, "state key, none given");
    expect_refusal(blob, len, NULL, &key128, -EBADMSG, "no TLV with tag 2");
    free(blob);
}

static void test_headers(void **state)
{
    (void)state;
    uint8_t *out = NULL;
    size_t out_len = 1;
    assert_int_equal(mig_blob_unwrap((const uint8_t *)"", 0, NULL, NULL, &out, &out_len, NULL), 0);
    assert_null(out);
    assert_int_equal(out_len, 0);
    uint8_t v3[10] = {3, 3, 0, 10, 0, 0, 0, 0, 0, 10};
    expect_refusal(v3, sizeof(v3), NULL, NULL, -ENOTSUP, "version");
    uint8_t v1enc[16] = {1, 1, 0, 10, 0, 0x02, 0, 0, 0, 16};
    expect_refusal(v1enc, sizeof(v1enc), &key128, NULL, -EBADMSG, "AES-CBC blocks");
    uint8_t shorthdr[8] = {2, 1, 0, 10};
    expect_refusal(shorthdr, sizeof(shorthdr), NULL, NULL, -EBADMSG, "shorter than a header");
}

/* swtpm's older format (its blob version 1, and state files with no header):
 * AES-CBC with a zero IV over SHA-256(state) || state, padded to the block. */
static size_t old_seal(const struct mig_key *key, const uint8_t *data, size_t len, uint8_t *out)
{
    uint8_t plain[512], iv[16] = {0};
    int n = 0, m = 0;
    EVP_Digest(data, len, plain, NULL, EVP_sha256(), NULL);
    memcpy(plain + 32, data, len);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    assert_int_equal(EVP_EncryptInit_ex(c, EVP_aes_128_cbc(), NULL, key->aes, iv), 1);
    assert_int_equal(EVP_EncryptUpdate(c, out, &n, plain, (int)(32 + len)), 1);
    assert_int_equal(EVP_EncryptFinal_ex(c, out + n, &m), 1); /* PKCS#7, as swtpm pads */
    EVP_CIPHER_CTX_free(c);
    return (size_t)(n + m);
}

static void test_old_format(void **state)
{
    (void)state;
    uint8_t data[100], blob[10 + 256], *out = NULL;
    size_t out_len = 0;
    fill(data, sizeof(data));
    /* a version 1 blob under the migration key, as swtpm's tests keep one */
    size_t ct = old_seal(&key128, data, sizeof(data), blob + 10);
    uint8_t head[10] = {1, 1, 0, 10, 0, 0x02};
    nv_put_be32(head + 6, (uint32_t)(10 + ct));
    memcpy(blob, head, 10);
    assert_int_equal(mig_blob_unwrap(blob, 10 + ct, &key128, NULL, &out, &out_len, NULL), 0);
    assert_int_equal(out_len, sizeof(data));
    assert_memory_equal(out, data, sizeof(data));
    free(out);
    expect_refusal(blob, 10 + ct, &key256, NULL, -EKEYREJECTED, "does not decrypt");
    expect_refusal(blob, 10 + ct, NULL, NULL, -ENOKEY, "migration key, none given");
    /* a state file with no header: plain, and encrypted (read with a key) */
    char dir[] = "/tmp/nvtpm-old-XXXXXX", path[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/tpm2-00.permall", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(blob + 10, 1, ct, f), ct);
    fclose(f);
    struct mig_state st;
    assert_int_equal(mig_dir_read(dir, 2, NULL, &key128, &st, NULL), 0);
    assert_true(st.encrypted);
    assert_int_equal(st.len[NVRAM_PERMALL], sizeof(data));
    assert_memory_equal(st.data[NVRAM_PERMALL], data, sizeof(data));
    mig_state_free(&st);
    assert_int_equal(mig_dir_read(dir, 2, NULL, &key256, &st, NULL), -EKEYREJECTED);
    f = fopen(path, "w");
    assert_int_equal(fwrite(data, 1, sizeof(data), f), sizeof(data));
    fclose(f);
    assert_int_equal(mig_dir_read(dir, 2, NULL, NULL, &st, NULL), 0);
    assert_false(st.encrypted);
    assert_memory_equal(st.data[NVRAM_PERMALL], data, sizeof(data));
    mig_state_free(&st);
    unlink(path);
    rmdir(dir);
}

/* The state folder: written as swtpm's files, read back with the same key;
 * a second write refuses to replace them; a wrong key is refused. */
static void test_state_folder(void **state)
{
    (void)state;
    char dir[] = "/tmp/test-blob-XXXXXX";
    assert_non_null(mkdtemp(dir));
    uint8_t perm[100], vol[7];
    fill(perm, sizeof(perm));
    fill(vol, sizeof(vol));
    struct mig_state st = {.tpm_version = 2, .data = {perm, vol, NULL}, .len = {100, 7, 0}};
    assert_int_equal(mig_dir_write(dir, &st, &key256, false, NULL), 0);
    assert_int_equal(mig_dir_write(dir, &st, NULL, false, NULL), -EEXIST);
    char path[64];
    snprintf(path, sizeof(path), "%s/tpm2-00.permall", dir);
    FILE *f = fopen(path, "rb");
    uint8_t head[10];
    assert_non_null(f);
    assert_int_equal(fread(head, 1, 10, f), 10);
    fclose(f);
    assert_int_equal(head[5], 0x09); /* state key, 256 bits */
    struct mig_state back;
    assert_int_equal(mig_dir_read(dir, 0, NULL, &key128, &back, NULL), -EKEYREJECTED);
    assert_int_equal(mig_dir_read(dir, 0, NULL, NULL, &back, NULL), -ENOKEY);
    assert_int_equal(mig_dir_read(dir, 0, NULL, &key256, &back, NULL), 0);
    assert_int_equal(back.tpm_version, 2);
    assert_true(back.encrypted);
    assert_int_equal(back.len[0], 100);
    assert_memory_equal(back.data[0], perm, 100);
    assert_int_equal(back.len[1], 7);
    assert_memory_equal(back.data[1], vol, 7);
    assert_null(back.data[2]);
    mig_state_free(&back);
    assert_int_equal(mig_dir_read(dir, 1, NULL, &key256, &back, NULL), -ENOENT);
    for (const char *n = "permall\0volatilestate\0"; *n; n += strlen(n) + 1) {
        snprintf(path, sizeof(path), "%s/tpm2-00.%s", dir, n);
        assert_int_equal(unlink(path), 0);
    }
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trips),    cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_plain_with_key), cmocka_unit_test(test_state_key_layer),
        cmocka_unit_test(test_headers),        cmocka_unit_test(test_old_format),
        cmocka_unit_test(test_state_folder),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
