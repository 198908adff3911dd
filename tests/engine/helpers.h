/* Shared helpers of the engine tests: temporary model directories made by
 * the real lorad-mkmodel, and small edits of their files. */
#ifndef LORAD_TEST_ENGINE_HELPERS_H
#define LORAD_TEST_ENGINE_HELPERS_H

#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Makes a fresh temporary directory holding a model written by
 * `lorad-mkmodel DIR <args>`; returns the directory (free it with rm_model). */
static inline char *mk_model(const char *args)
{
	char tmpl[] = "/tmp/lorad-test-XXXXXX", cmd[8192];
	char *dir = mkdtemp(tmpl);

	if (!dir)
		return NULL;
	char *out;

	snprintf(cmd, sizeof(cmd), "'%s' %s/m %s", MKMODEL, dir, args);
	if (system(cmd) != 0)
		return NULL;
	/* dir is the template itself: room for "/m" only in a copy */
	out = malloc(strlen(dir) + 3);
	if (out)
		sprintf(out, "%s/m", dir);
	return out;
}

static inline void rm_model(char *dir)
{
	char cmd[4200];
	char *slash;

	if (!dir)
		return;
	/* dir is .../lorad-test-XXXXXX/m: remove the parent */
	slash = strrchr(dir, '/');
	if (slash)
		*slash = 0;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	free(dir);
}

/* Sets key of dir/file (a JSON object) to the JSON text value. */
static inline int set_json(const char *dir, const char *file, const char *key, const char *value)
{
	char path[4200];
	json_object *o, *v;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	o = json_object_from_file(path);
	if (!o)
		return -1;
	v = json_tokener_parse(value);
	json_object_object_add(o, key, v);
	if (json_object_to_file(path, o) < 0)
		return -1;
	json_object_put(o);
	return 0;
}

/* Writes a safetensors file from a header text and data bytes. */
static inline int write_st(const char *path, const char *header, const void *data, size_t n)
{
	FILE *f = fopen(path, "wb");
	unsigned char len8[8];
	size_t hl = strlen(header);
	int i;

	if (!f)
		return -1;
	for (i = 0; i < 8; i++)
		len8[i] = (unsigned char)((uint64_t)hl >> (8 * i));
	fwrite(len8, 1, 8, f);
	fwrite(header, 1, hl, f);
	fwrite(data, 1, n, f);
	return fclose(f);
}

#endif
