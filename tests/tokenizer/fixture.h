/* Test helpers: find a fixture's tokenizer.json (unpacked by the build into
 * TOK_FIXTURE_BIN, or built here for variants from base + patch) and read
 * its expected.json. */
#ifndef LORAD_TOK_FIXTURE_H
#define LORAD_TOK_FIXTURE_H

#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const FIXTURES[] = {
	"gpt2", "llama2", "llama3", "qwen3",
	"llama2-metaspace", "llama2-metaspace-split", "gpt2-mix", "gpt2-split-removed",
	"gpt2-split-merged-prev", "gpt2-split-contiguous", "gpt2-whitespace",
	"gpt2-whitespacesplit",
};
#define NFIXTURES (sizeof(FIXTURES) / sizeof(FIXTURES[0]))

static inline struct json_object *fixture_expected(const char *name)
{
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s/%s/expected.json", TOK_FIXTURE_SRC, name);
	struct json_object *o = json_object_from_file(p);
	if (!o)
		fprintf(stderr, "cannot read %s: %s\n", p, json_util_get_last_err());
	return o;
}

/* Path of the fixture's tokenizer.json into buf; variants are written into
 * TOK_FIXTURE_BIN/<name>/ on first use. Returns 0 or -1. */
static inline int fixture_tokenizer(const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s/tokenizer.json", TOK_FIXTURE_BIN, name);
	if (access(buf, R_OK) == 0)
		return 0;
	struct json_object *exp = fixture_expected(name);
	struct json_object *base = NULL, *patch = NULL;
	if (!exp || !json_object_object_get_ex(exp, "base", &base) ||
	    !json_object_object_get_ex(exp, "patch", &patch)) {
		fprintf(stderr, "%s: no tokenizer.json and no base/patch\n", name);
		json_object_put(exp);
		return -1;
	}
	char bp[PATH_MAX];
	snprintf(bp, sizeof(bp), "%s/%s/tokenizer.json", TOK_FIXTURE_BIN,
	         json_object_get_string(base));
	struct json_object *root = json_object_from_file(bp);
	if (!root) {
		fprintf(stderr, "cannot read %s\n", bp);
		json_object_put(exp);
		return -1;
	}
	json_object_object_foreach(patch, k, v) json_object_object_add(root, k, json_object_get(v));
	char dir[PATH_MAX], tmp[PATH_MAX + 32];
	snprintf(dir, sizeof(dir), "%s/%s", TOK_FIXTURE_BIN, name);
	mkdir(dir, 0755);
	snprintf(tmp, sizeof(tmp), "%s.%d", buf, (int)getpid());
	int rc = json_object_to_file_ext(tmp, root,
	                                 JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	if (rc == 0)
		rc = rename(tmp, buf);
	json_object_put(root);
	json_object_put(exp);
	return rc == 0 ? 0 : -1;
}

/* ids array of a case field into a malloc'd array. */
static inline uint32_t *json_ids(struct json_object *a, size_t *n)
{
	*n = a ? json_object_array_length(a) : 0;
	uint32_t *v = malloc((*n + 1) * sizeof(uint32_t));
	for (size_t i = 0; i < *n; i++)
		v[i] = (uint32_t)json_object_get_int64(json_object_array_get_idx(a, i));
	return v;
}

#endif
