/* cbc.c - swtpm's blob encryption: AES-128/256-CBC with a random IV, the
 * plaintext padded to a multiple of the key length, authenticated by
 * HMAC-SHA256 (keyed with the AES key) over the ciphertext followed by the
 * IV. The HMAC is checked, in constant time, before anything is decrypted.
 * Also the format of swtpm's state files before they had a header: AES-CBC
 * with a zero IV over SHA-256(state) followed by the state. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#define HMAC_LEN  32u
#define AES_BLOCK 16u

int mig_key_from(const struct nvram_key *key, struct mig_key *out, struct nv_error *err)
{
    return nvram_key_swtpm_aes(key, out->aes, &out->len, err);
}

void mig_key_wipe(struct mig_key *key)
{
    nv_wipe(key, sizeof(*key));
}

static const EVP_CIPHER *cbc_for(const struct mig_key *key)
{
    return key->len == 32 ? EVP_aes_256_cbc() : EVP_aes_128_cbc();
}

static int hmac(const struct mig_key *key, const uint8_t *ct, size_t ct_len, const uint8_t *iv,
                size_t iv_len, uint8_t out[HMAC_LEN])
{
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    size_t n = 0;
    int ok = ctx && EVP_MAC_init(ctx, key->aes, key->len, params) == 1 &&
             EVP_MAC_update(ctx, ct, ct_len) == 1 && EVP_MAC_update(ctx, iv, iv_len) == 1 &&
             EVP_MAC_final(ctx, out, &n, HMAC_LEN) == 1 && n == HMAC_LEN;
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return ok ? 0 : -EIO;
}

/* AES-CBC without OpenSSL's padding: swtpm pads to a multiple of the key
 * length (not of the block), each padding byte holding the padding's length,
 * so a 256-bit key's padding can be up to 32 bytes. */
static int cbc_raw(const struct mig_key *key, int encrypt, const uint8_t iv[AES_BLOCK],
                   const uint8_t *in, size_t len, uint8_t *out)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, tail = 0;
    int ok = ctx && EVP_CipherInit_ex(ctx, cbc_for(key), NULL, key->aes, iv, encrypt) == 1 &&
             EVP_CIPHER_CTX_set_padding(ctx, 0) == 1 &&
             EVP_CipherUpdate(ctx, out, &n, in, (int)len) == 1 &&
             EVP_CipherFinal_ex(ctx, out + n, &tail) == 1 && (size_t)n + (size_t)tail == len;
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : -EIO;
}

static int encrypt_padded(const struct mig_key *key, const uint8_t iv[AES_BLOCK], const uint8_t *in,
                          size_t len, uint8_t **out, size_t *out_len)
{
    size_t pad = key->len - len % key->len, total = len + pad;
    if (len > INT32_MAX - 64)
        return -EFBIG;
    uint8_t *plain = malloc(total), *ct = malloc(total);
    int r = plain && ct ? 0 : -ENOMEM;
    if (r == 0) {
        memcpy(plain, in, len);
        memset(plain + len, (int)pad, pad);
        r = cbc_raw(key, 1, iv, plain, total, ct);
    }
    if (plain)
        nv_wipe(plain, total);
    free(plain);
    if (r < 0) {
        free(ct);
        return r;
    }
    *out = ct;
    *out_len = total;
    return 0;
}

static int decrypt_padded(const struct mig_key *key, const uint8_t iv[AES_BLOCK], const uint8_t *in,
                          size_t len, uint8_t **out, size_t *out_len)
{
    if (len > INT32_MAX)
        return -EFBIG;
    uint8_t *plain = malloc(len);
    if (!plain)
        return -ENOMEM;
    int r = cbc_raw(key, 0, iv, in, len, plain);
    size_t pad = r == 0 ? plain[len - 1] : 0;
    if (r == 0 && (pad == 0 || pad > key->len || pad > len))
        r = -EBADMSG;
    for (size_t i = len - pad; r == 0 && i < len; i++)
        if (plain[i] != pad)
            r = -EBADMSG;
    if (r < 0) {
        nv_wipe(plain, len);
        free(plain);
        return r;
    }
    *out = plain;
    *out_len = len - pad;
    return 0;
}

int mig_cbc_seal(const struct mig_key *key, const uint8_t *in, size_t len, uint16_t ct_tag,
                 uint16_t iv_tag, uint8_t **out, size_t *out_len, struct nv_error *err)
{
    uint8_t iv[32], mac[HMAC_LEN], *ct = NULL;
    size_t ct_len = 0;
    *out = NULL;
    if (RAND_bytes(iv, (int)key->len) != 1)
        return nv_error_set(err, -EIO, "state blob: no random IV");
    int r = encrypt_padded(key, iv, in, len, &ct, &ct_len);
    if (r == 0)
        r = hmac(key, ct, ct_len, iv, key->len, mac);
    uint8_t *b = r == 0 ? malloc(3 * 6 + ct_len + HMAC_LEN + key->len) : NULL;
    if (r == 0 && b) {
        uint8_t *end = mig_put_tlv(b, ct_tag, ct, ct_len);
        end = mig_put_tlv(end, MIG_TAG_HMAC, mac, HMAC_LEN);
        end = mig_put_tlv(end, iv_tag, iv, key->len);
        *out = b;
        *out_len = (size_t)(end - b);
    }
    free(ct);
    if (r < 0)
        return nv_error_set(err, r, "state blob: encryption failed");
    return b ? 0 : nv_error_set(err, -ENOMEM, "out of memory");
}

int mig_cbc_open(const struct mig_key *key, const uint8_t *in, size_t len, uint16_t ct_tag,
                 uint16_t iv_tag, uint8_t **out, size_t *out_len, struct nv_error *err)
{
    const uint8_t *ct, *iv, *mac;
    size_t ct_len, iv_len, mac_len;
    uint8_t want[HMAC_LEN];
    int r = mig_find_tlv(in, len, ct_tag, &ct, &ct_len, err);
    if (r == 0)
        r = mig_find_tlv(in, len, iv_tag, &iv, &iv_len, err);
    if (r == 0)
        r = mig_find_tlv(in, len, MIG_TAG_HMAC, &mac, &mac_len, err);
    if (r < 0)
        return r;
    if (iv_len < AES_BLOCK || mac_len != HMAC_LEN || ct_len == 0 || ct_len % AES_BLOCK)
        return nv_error_set(err, -EBADMSG,
                            "state blob: IV of %zu bytes, HMAC of %zu, ciphertext of %zu "
                            "(not AES-CBC)",
                            iv_len, mac_len, ct_len);
    if (hmac(key, ct, ct_len, iv, iv_len, want) < 0)
        return nv_error_set(err, -EIO, "state blob: HMAC failed");
    if (CRYPTO_memcmp(want, mac, HMAC_LEN) != 0)
        return nv_error_set(err, -EKEYREJECTED,
                            "state blob: HMAC does not match (wrong key or damaged blob)");
    r = decrypt_padded(key, iv, ct, ct_len, out, out_len);
    if (r < 0)
        return nv_error_set(err, r, "state blob: padding is wrong after decryption");
    return 0;
}

int mig_cbc_open_v1(const struct mig_key *key, const uint8_t *in, size_t len, uint8_t **out,
                    size_t *out_len, struct nv_error *err)
{
    static const uint8_t zero_iv[AES_BLOCK];
    uint8_t *plain = NULL, digest[SHA256_DIGEST_LENGTH];
    size_t plain_len = 0;
    if (len == 0 || len % AES_BLOCK)
        return nv_error_set(err, -EBADMSG,
                            "state file of %zu bytes: not swtpm's old encrypted format "
                            "(AES-CBC blocks)",
                            len);
    int r = decrypt_padded(key, zero_iv, in, len, &plain, &plain_len);
    if (r == 0 && plain_len < SHA256_DIGEST_LENGTH)
        r = -EBADMSG;
    if (r == 0) {
        SHA256(plain + SHA256_DIGEST_LENGTH, plain_len - SHA256_DIGEST_LENGTH, digest);
        r = CRYPTO_memcmp(digest, plain, sizeof(digest)) == 0 ? 0 : -EBADMSG;
    }
    if (r == 0 && !(*out = malloc(plain_len - SHA256_DIGEST_LENGTH + 1)))
        r = -ENOMEM;
    if (r == 0) {
        *out_len = plain_len - SHA256_DIGEST_LENGTH;
        memcpy(*out, plain + SHA256_DIGEST_LENGTH, *out_len);
    }
    if (plain) {
        nv_wipe(plain, plain_len);
        free(plain);
    }
    if (r == -ENOMEM)
        return nv_error_set(err, r, "out of memory");
    if (r < 0) /* no authentication in that format: a wrong key shows here */
        return nv_error_set(err, -EKEYREJECTED,
                            "state file in swtpm's old format: the key does not decrypt it "
                            "(padding or SHA-256 mismatch: a wrong key or a damaged file)");
    return 0;
}
