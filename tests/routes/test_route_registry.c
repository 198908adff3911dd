/* SPDX-License-Identifier: MIT */
/*
 * Adapter versions are immutable. Re-registering changed files under a
 * registered version is refused with -EEXIST and a message that says so,
 * the same files are accepted again; a version that a route still uses
 * cannot be removed; and files edited in place after registration are
 * refused when they are loaded: the request for that skill fails with an
 * error, the other skills and the base model keep serving, and the daemon
 * runs on. Versions registered before the chunk-tree hash (state.json with
 * plain SHA-256 and no "hash_scheme") still load, are still verified, and
 * are still compared with files registered again under their id.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <lorad/lorad.h>
#include <openssl/evp.h>

#include "registry.h"
#include "rt_harness.h"

static struct rt_models models;
static char work[128];

static void copy_file(const char *from, const char *to)
{
	char buf[1 << 16];
	int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ssize_t k;

	assert_true(in >= 0 && out >= 0);
	while ((k = read(in, buf, sizeof(buf))) > 0)
		assert_int_equal(write(out, buf, (size_t)k), k);
	close(in);
	close(out);
}

/* a private copy of adapter @i at WORK/@name, to edit */
static void copy_adapter(int i, const char *name, char *out, size_t len)
{
	char a[512], b[512];

	snprintf(out, len, "%s/%s", work, name);
	mkdir(out, 0755);
	for (int f = 0; f < 2; f++) {
		const char *fn = f ? "adapter_model.safetensors" : "adapter_config.json";

		snprintf(a, sizeof(a), "%s/%s", models.adapter[i], fn);
		snprintf(b, sizeof(b), "%s/%s", out, fn);
		copy_file(a, b);
	}
}

/* flip one byte near the end of the tensor data, in place; returns the old byte */
static unsigned char flip_byte(const char *dir, int restore_byte)
{
	char p[512];
	unsigned char c;
	struct stat st;
	int fd;

	snprintf(p, sizeof(p), "%s/adapter_model.safetensors", dir);
	fd = open(p, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(pread(fd, &c, 1, st.st_size - 3), 1);
	{
		unsigned char n = restore_byte >= 0 ? (unsigned char)restore_byte : (unsigned char)(c ^ 0x40);

		assert_int_equal(pwrite(fd, &n, 1, st.st_size - 3), 1);
	}
	close(fd);
	return c;
}

static void test_registry_in_process(void **state)
{
	struct registry *r = registry_new(NULL, NULL);
	const struct reg_version *v, *w;
	char err[512], dir[256];

	(void)state;
	copy_adapter(0, "inproc", dir, sizeof(dir));
	assert_int_equal(registry_add(r, "sql", "v1", dir, &v, err, sizeof(err)), 0);
	/* the same files again, from the same or another path: the same version */
	assert_int_equal(registry_add(r, "sql", "v1", dir, &w, err, sizeof(err)), 0);
	assert_ptr_equal(v, w);
	assert_int_equal(registry_add(r, "sql", "v1", models.adapter[0], &w, err, sizeof(err)), 0);
	assert_ptr_equal(v, w);
	/* other files under that version */
	err[0] = 0;
	assert_int_equal(registry_add(r, "sql", "v1", models.adapter[1], &w, err, sizeof(err)), -EEXIST);
	assert_non_null(strstr(err, "sql@v1 is registered with other files"));
	/* the version derived from the hash: the same files give the same id */
	assert_int_equal(registry_add(r, "sql", NULL, models.adapter[2], &v, err, sizeof(err)), 0);
	assert_int_equal(strlen(v->version), 12);
	assert_int_equal(strncmp(v->version, v->pe->h.sha256, 12), 0);
	assert_int_equal(registry_add(r, "sql", "", models.adapter[2], &w, err, sizeof(err)), 0);
	assert_ptr_equal(v, w);
	/* names */
	assert_int_equal(registry_add(r, "base", "v1", dir, &w, err, sizeof(err)), -EINVAL);
	assert_int_equal(registry_add(r, "s q l", "v1", dir, &w, err, sizeof(err)), -EINVAL);
	assert_int_equal(registry_add(r, "sql", "v1", "/nonexistent", &w, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "/nonexistent/adapter_config.json"));
	registry_free(r);
}

static bool admin_refused(const char *admin, const char *line, const char *needle)
{
	struct json_object *r, *ok, *e;
	bool refused;

	if (rt_admin(admin, line, &r))
		return false;
	refused = json_object_object_get_ex(r, "ok", &ok) && !json_object_get_boolean(ok) &&
		  json_object_object_get_ex(r, "error", &e) && strstr(json_object_get_string(e), needle);
	if (!refused)
		fprintf(stderr, "%s -> %s (wanted a refusal saying '%s')\n", line,
			json_object_to_json_string(r), needle);
	json_object_put(r);
	return refused;
}

static int generate(struct lorad *c, const char *skill, struct lorad_event *fin)
{
	static const uint32_t prompt[3] = { 11, 22, 33 };
	uint32_t out[4];
	struct lorad_request q = { .skill = skill, .prompt = prompt, .n_prompt = 3,
				   .max_tokens = 4, .out = out, .routing_key = 7 };

	return lorad_generate(c, &q, fin, 20000);
}

static void test_registry_daemon(void **state)
{
	char sql1[256], sql2[256], chat[256], sql1b[256], line[1024], a0[300], a1[300], a2[300];
	const char *args[] = { "--adapter", a0, "--adapter", a1, "--adapter", a2, NULL };
	struct lorad_event fin;
	struct rt_daemon d;
	struct lorad *c;
	unsigned char old;

	(void)state;
	copy_adapter(0, "sql1", sql1, sizeof(sql1));
	copy_adapter(0, "sql1b", sql1b, sizeof(sql1b));
	copy_adapter(1, "sql2", sql2, sizeof(sql2));
	copy_adapter(2, "chat", chat, sizeof(chat));
	snprintf(a0, sizeof(a0), "sql@v1=%s", sql1);
	snprintf(a1, sizeof(a1), "chat@v1=%s", chat);
	snprintf(a2, sizeof(a2), "sql@v2=%s", sql2);
	assert_int_equal(rt_daemon_init(&d), 0);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);

	/* same files again (another path): accepted; other files: refused */
	snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"sql@v1\",\"path\":\"%s\"}", sql1b);
	assert_true(rt_admin_ok(d.admin, line));
	snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"sql@v1\",\"path\":\"%s\"}", sql1);
	assert_true(rt_admin_ok(d.admin, line));
	snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"sql@v1\",\"path\":\"%s\"}", sql2);
	assert_true(admin_refused(d.admin, line, "sql@v1 is registered with other files"));

	/* removing what a route uses: refused; what none uses: done, and back */
	assert_true(admin_refused(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"sql@v1\"}",
				  "still in a route"));
	assert_true(admin_refused(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"chat@v1\"}",
				  "still in a route"));
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_rollout\",\"skill\":\"sql\",\"version\":\"sql@v2\",\"percent\":\"50\"}"));
	assert_true(admin_refused(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"sql@v2\"}",
				  "still in a route"));
	/* routed away by a rollback, it may go */
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_rollback\",\"skill\":\"sql\"}"));
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"sql@v2\"}"));
	assert_true(admin_refused(d.admin, "{\"cmd\":\"adapters_remove\",\"id\":\"sql@v2\"}",
				  "no adapter version sql@v2"));
	/* a route cannot name it now */
	assert_true(admin_refused(d.admin, "{\"cmd\":\"route_rollout\",\"skill\":\"sql\",\"version\":\"sql@v2\",\"percent\":\"5\"}",
				  "not a registered adapter version"));

	/* chat's files are edited in place before they are ever loaded */
	old = flip_byte(chat, -1);
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	assert_int_equal(generate(c, "chat", &fin), 0);
	if (fin.res == 0)
		fail_msg("a request for chat was served from files edited after registration");
	assert_int_equal(fin.res, -EBADMSG);
	assert_int_equal(fin.field, LORAD_FIELD_SKILL);
	/* the loader checks each file's SHA-256 and names the file that changed */
	assert_true(rt_log_has(&d, "adapter chat@v1 not loaded"));
	assert_true(rt_log_has(&d, "changed since it was registered"));
	/* the others keep serving, and chat keeps failing while the files differ */
	assert_int_equal(generate(c, "sql", &fin), 0);
	assert_int_equal(fin.res, 0);
	assert_int_equal(fin.n_tokens, 4);
	assert_int_equal(fin.version, rt_vid_of(d.admin, "sql@v1"));
	assert_int_equal(generate(c, "base", &fin), 0);
	assert_int_equal(fin.res, 0);
	assert_int_equal(fin.version, 0);
	assert_int_equal(generate(c, "chat", &fin), 0);
	assert_int_equal(fin.res, -EBADMSG);
	/* a prefetch starts a load and returns at once (the engine never waits
	 * for the disk); the refusal shows in the version's load_error */
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"adapters_prefetch\",\"id\":\"chat@v1\"}"));
	{
		bool seen = false;

		for (int i = 0; i < 200 && !seen; i++) {
			struct json_object *r;

			usleep(10000);
			if (rt_admin(d.admin, "{\"cmd\":\"adapters_list\"}", &r) == 0) {
				seen = strstr(json_object_to_json_string(r),
					      "changed since it was registered") != NULL;
				json_object_put(r);
			}
		}
		assert_true(seen);
	}
	/* the registered bytes back: served again */
	flip_byte(chat, old);
	assert_int_equal(generate(c, "chat", &fin), 0);
	assert_int_equal(fin.res, 0);
	assert_int_equal(fin.version, rt_vid_of(d.admin, "chat@v1"));
	lorad_close(c);
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"status\"}"));

	/* after a restart the registry still refuses other files under sql@v1
	 * given on the command line, and keeps serving the registered ones */
	assert_int_equal(rt_daemon_stop(&d), 0);
	snprintf(a0, sizeof(a0), "sql@v1=%s", sql2);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	assert_true(rt_log_has(&d, "sql@v1 is registered with other files"));
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	assert_int_equal(generate(c, "sql", &fin), 0);
	assert_int_equal(fin.res, 0);
	lorad_close(c);
	assert_int_equal(rt_daemon_stop(&d), 0);
	rt_daemon_cleanup(&d);
}

/* --- versions registered before the tree hash ---------------------------------------------- */

static void hex32(const unsigned char d[32], char out[65])
{
	for (int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* The hashes a daemon before the tree recorded for @dir, computed here from
 * that definition: plain SHA-256 of each file, and the identity over both
 * files' bytes, each preceded by its name and a NUL. */
static void old_hashes(const char *dir, char id[65], char cfg[65], char st[65])
{
	static const char *const fn[2] = { "adapter_config.json", "adapter_model.safetensors" };
	EVP_MD_CTX *all = EVP_MD_CTX_new();
	unsigned char d[32];
	unsigned int dl = 32;

	assert_true(EVP_DigestInit_ex(all, EVP_sha256(), NULL));
	for (int k = 0; k < 2; k++) {
		char p[512];
		struct stat sb;
		unsigned char *b;
		int fd;

		snprintf(p, sizeof(p), "%s/%s", dir, fn[k]);
		fd = open(p, O_RDONLY);
		assert_true(fd >= 0);
		assert_int_equal(fstat(fd, &sb), 0);
		b = malloc((size_t)sb.st_size + 1);
		assert_non_null(b);
		assert_int_equal(read(fd, b, (size_t)sb.st_size), sb.st_size);
		close(fd);
		assert_true(EVP_DigestUpdate(all, fn[k], strlen(fn[k]) + 1));
		assert_true(EVP_DigestUpdate(all, b, (size_t)sb.st_size));
		assert_true(EVP_Digest(b, (size_t)sb.st_size, d, &dl, EVP_sha256(), NULL));
		hex32(d, k ? st : cfg);
		free(b);
	}
	assert_true(EVP_DigestFinal_ex(all, d, &dl));
	hex32(d, id);
	EVP_MD_CTX_free(all);
}

/* The hashes a daemon recorded for @dir under "sha256-tree" (before
 * BLAKE3), from chash.h's definition: per file SHA-256(u64le(L) ‖ u64le(C)
 * ‖ SHA-256 of each 1 MiB chunk), the identity SHA-256 over each file's name,
 * a NUL and its root. */
static void tree_hashes(const char *dir, char id[65], char cfg[65], char st[65])
{
	static const char *const fn[2] = { "adapter_config.json", "adapter_model.safetensors" };
	const size_t c = 1u << 20;
	EVP_MD_CTX *all = EVP_MD_CTX_new();
	unsigned char d[32], root[32];
	unsigned int dl = 32;

	assert_true(EVP_DigestInit_ex(all, EVP_sha256(), NULL));
	for (int k = 0; k < 2; k++) {
		EVP_MD_CTX *top = EVP_MD_CTX_new();
		unsigned char head[16], *b;
		char p[512];
		struct stat sb;
		size_t len;
		int fd;

		snprintf(p, sizeof(p), "%s/%s", dir, fn[k]);
		fd = open(p, O_RDONLY);
		assert_true(fd >= 0);
		assert_int_equal(fstat(fd, &sb), 0);
		len = (size_t)sb.st_size;
		b = malloc(len + 1);
		assert_non_null(b);
		assert_int_equal(read(fd, b, len), sb.st_size);
		close(fd);
		for (int i = 0; i < 8; i++) {
			head[i] = (unsigned char)((uint64_t)len >> (8 * i));
			head[8 + i] = (unsigned char)((uint64_t)c >> (8 * i));
		}
		assert_true(EVP_DigestInit_ex(top, EVP_sha256(), NULL));
		assert_true(EVP_DigestUpdate(top, head, 16));
		for (size_t off = 0; off < len; off += c) {
			assert_true(EVP_Digest(b + off, len - off < c ? len - off : c, d, &dl,
					       EVP_sha256(), NULL));
			assert_true(EVP_DigestUpdate(top, d, 32));
		}
		assert_true(EVP_DigestFinal_ex(top, root, &dl));
		EVP_MD_CTX_free(top);
		hex32(root, k ? st : cfg);
		assert_true(EVP_DigestUpdate(all, fn[k], strlen(fn[k]) + 1));
		assert_true(EVP_DigestUpdate(all, root, 32));
		free(b);
	}
	assert_true(EVP_DigestFinal_ex(all, d, &dl));
	hex32(d, id);
	EVP_MD_CTX_free(all);
}

/* The version @id in @state's state.json, or NULL (a reference into @root). */
static struct json_object *state_version(struct json_object *root, const char *id)
{
	struct json_object *vs, *v, *n, *ver;

	assert_true(json_object_object_get_ex(root, "versions", &vs));
	for (size_t i = 0; i < json_object_array_length(vs); i++) {
		char vid[80];

		v = json_object_array_get_idx(vs, i);
		assert_true(json_object_object_get_ex(v, "name", &n));
		assert_true(json_object_object_get_ex(v, "version", &ver));
		snprintf(vid, sizeof(vid), "%s@%s", json_object_get_string(n),
			 json_object_get_string(ver));
		if (!strcmp(vid, id))
			return v;
	}
	return NULL;
}

static void test_old_scheme_state(void **state)
{
	char sql[256], chat[256], sql3[256], sqlb[256], a0[300], a1[300], path[400], line[1024];
	const char *args[] = { "--adapter", a0, "--adapter", a1, NULL };
	struct json_object *root, *v, *x;
	struct lorad_event fin;
	struct rt_daemon d;
	struct lorad *c;

	(void)state;
	copy_adapter(0, "old-sql", sql, sizeof(sql));
	copy_adapter(0, "old-sqlb", sqlb, sizeof(sqlb));
	copy_adapter(1, "old-chat", chat, sizeof(chat));
	copy_adapter(3, "old-sql3", sql3, sizeof(sql3));
	snprintf(a0, sizeof(a0), "sql@v1=%s", sql);
	snprintf(a1, sizeof(a1), "chat@v1=%s", chat);
	assert_int_equal(rt_daemon_init(&d), 0);
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	assert_int_equal(rt_daemon_stop(&d), 0);

	/* what this daemon records: the BLAKE3 tree, with its chunk size */
	snprintf(path, sizeof(path), "%s/state.json", d.state);
	root = json_object_from_file(path);
	assert_non_null(root);
	v = state_version(root, "sql@v1");
	assert_non_null(v);
	assert_true(json_object_object_get_ex(v, "hash_scheme", &x));
	assert_string_equal(json_object_get_string(x), "blake3-tree");
	assert_true(json_object_object_get_ex(v, "hash_chunk", &x));
	assert_int_equal(json_object_get_int64(x), 1 << 20);

	/* the state as daemons before wrote it: sql@v1 before the tree (plain
	 * SHA-256), chat@v1 before BLAKE3 (the tree under SHA-256) */
	for (int k = 0; k < 2; k++) {
		char id[65], cfg[65], st[65];

		v = state_version(root, k ? "chat@v1" : "sql@v1");
		assert_non_null(v);
		if (k)
			tree_hashes(chat, id, cfg, st);
		else
			old_hashes(sql, id, cfg, st);
		json_object_object_add(v, "sha256", json_object_new_string(id));
		json_object_object_add(v, "config_sha256", json_object_new_string(cfg));
		json_object_object_add(v, "weights_sha256", json_object_new_string(st));
		if (k) {
			json_object_object_add(v, "hash_scheme", json_object_new_string("sha256-tree"));
		} else {
			json_object_object_del(v, "hash_scheme");
			json_object_object_del(v, "hash_chunk");
		}
	}
	assert_int_equal(json_object_to_file_ext(path, root, JSON_C_TO_STRING_PLAIN), 0);
	json_object_put(root);

	/* it starts on it; the same files given again under the same ids are
	 * the versions it has, compared under their own scheme */
	assert_int_equal(rt_daemon_start(&d, models.model, args), 0);
	assert_false(rt_log_has_now(&d, "registered with other files"));
	snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"sql@v1\",\"path\":\"%s\"}", sqlb);
	assert_true(rt_admin_ok(d.admin, line));
	snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"sql@v1\",\"path\":\"%s\"}", sql3);
	assert_true(admin_refused(d.admin, line, "sql@v1 is registered with other files"));
	snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"chat@v1\",\"path\":\"%s\"}", chat);
	assert_true(rt_admin_ok(d.admin, line));
	snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"chat@v1\",\"path\":\"%s\"}", sql3);
	assert_true(admin_refused(d.admin, line, "chat@v1 is registered with other files"));

	/* both old versions load, verified under their own schemes */
	assert_int_equal(lorad_connect(d.sock, NULL, &c), 0);
	assert_int_equal(generate(c, "sql", &fin), 0);
	assert_int_equal(fin.res, 0);
	assert_int_equal(fin.version, rt_vid_of(d.admin, "sql@v1"));
	/* one of them changed on disk: that load fails, naming the file */
	flip_byte(chat, -1);
	assert_int_equal(generate(c, "chat", &fin), 0);
	assert_int_equal(fin.res, -EBADMSG);
	assert_true(rt_log_has(&d, "adapter chat@v1 not loaded"));
	snprintf(line, sizeof(line), "%s/adapter_model.safetensors: changed since it was registered "
		 "(sha256-tree ", chat);
	assert_true(rt_log_has(&d, line));
	/* and the daemon serves on */
	assert_int_equal(generate(c, "sql", &fin), 0);
	assert_int_equal(fin.res, 0);
	assert_int_equal(generate(c, "base", &fin), 0);
	assert_int_equal(fin.res, 0);

	/* a new version beside them gets the tree; the old ones are written
	 * back as they were */
	snprintf(line, sizeof(line), "{\"cmd\":\"adapters_add\",\"id\":\"sql@v3\",\"path\":\"%s\"}", sql3);
	assert_true(rt_admin_ok(d.admin, line));
	assert_true(rt_admin_ok(d.admin, "{\"cmd\":\"route_rollout\",\"skill\":\"sql\",\"version\":\"sql@v3\",\"percent\":\"100\"}"));
	assert_int_equal(generate(c, "sql", &fin), 0);
	assert_int_equal(fin.res, 0);
	assert_int_equal(fin.version, rt_vid_of(d.admin, "sql@v3"));
	lorad_close(c);
	root = json_object_from_file(path);
	assert_non_null(root);
	assert_false(json_object_object_get_ex(state_version(root, "sql@v1"), "hash_scheme", NULL));
	assert_false(json_object_object_get_ex(state_version(root, "sql@v1"), "hash_chunk", NULL));
	assert_true(json_object_object_get_ex(state_version(root, "chat@v1"), "hash_scheme", &x));
	assert_string_equal(json_object_get_string(x), "sha256-tree");
	assert_true(json_object_object_get_ex(state_version(root, "chat@v1"), "hash_chunk", &x));
	assert_int_equal(json_object_get_int64(x), 1 << 20);
	assert_true(json_object_object_get_ex(state_version(root, "sql@v3"), "hash_scheme", &x));
	assert_string_equal(json_object_get_string(x), "blake3-tree");
	json_object_put(root);
	assert_int_equal(rt_daemon_stop(&d), 0);
	rt_daemon_cleanup(&d);
}

static int setup(void **state)
{
	(void)state;
	if (rt_tmpdir(work, sizeof(work), "rtr"))
		return -1;
	return rt_models_make(&models);
}

static int teardown(void **state)
{
	(void)state;
	rt_models_remove(&models);
	rt_rm_rf(work);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_registry_in_process),
		cmocka_unit_test(test_registry_daemon),
		cmocka_unit_test(test_old_scheme_state),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, setup, teardown);
}
