/* SPDX-License-Identifier: MIT */
/*
 * lorad-http's chat rendering, for test_chat_template.py to compare with
 * transformers' apply_chat_template:
 *   chat_render render FAMILY BOS < BODY   the prompt of a chat body's
 *       messages, parsed and rendered as the gateway does (oa_parse_chat,
 *       chat_render), on stdout; exit 1 with "PARAM<TAB>MESSAGE" on stderr
 *       when refused
 *   chat_render template FILE BOS < BODY   the same in the format of the
 *       Jinja template in FILE, as the daemon recognises it (chat_classify)
 *   chat_render classify < TEMPLATE        the family of a Jinja template
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "openai.h"

static char *slurp(FILE *f, size_t *len)
{
	size_t cap = 1 << 16;
	char *b = malloc(cap);

	*len = 0;
	while (b) {
		size_t n = fread(b + *len, 1, cap - *len, f);

		*len += n;
		if (n == 0)
			break;
		if (*len == cap) {
			char *p = realloc(b, cap * 2);

			if (!p) {
				free(b);
				return NULL;
			}
			b = p;
			cap *= 2;
		}
	}
	return b;
}

int main(int argc, char **argv)
{
	char err[400], param[64], *in, *out = NULL;
	struct chat_format cf;
	struct oa_chat ch;
	enum chat_family f;
	size_t len, olen;
	int rc;

	if (argc < 2 || !(in = slurp(stdin, &len))) {
		fprintf(stderr, "usage: chat_render render FAMILY BOS < BODY | template FILE BOS < BODY | "
			"classify < TEMPLATE\n");
		return 2;
	}
	if (!strcmp(argv[1], "classify")) {
		puts(chat_family_name(chat_classify(in, len, &cf)));
		free(in);
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "template")) {
		FILE *t = fopen(argv[2], "rb");
		size_t tl;
		char *tmpl = t ? slurp(t, &tl) : NULL;

		if (t)
			fclose(t);
		if (!tmpl) {
			fprintf(stderr, "%s: cannot read\n", argv[2]);
			free(in);
			return 2;
		}
		chat_classify(tmpl, tl, &cf);
		free(tmpl);
	} else if (argc == 4 && !strcmp(argv[1], "render") && chat_family_parse(argv[2], &f) == 0) {
		chat_format_forced(f, &cf);
	} else {
		fprintf(stderr, "usage: chat_render render FAMILY BOS < BODY | template FILE BOS < BODY\n");
		free(in);
		return 2;
	}
	rc = oa_parse_chat(in, len, 4096, &ch, err, sizeof(err), param, sizeof(param));
	free(in);
	if (rc < 0) {
		fprintf(stderr, "%s\t%s\n", param, err);
		return 1;
	}
	rc = chat_render(&cf, argv[3], ch.msgs, ch.n_msgs, &out, &olen, err, sizeof(err), param,
			 sizeof(param));
	oa_chat_free(&ch);
	if (rc < 0) {
		fprintf(stderr, "%s\t%s\n", param, err);
		return 1;
	}
	fwrite(out, 1, olen, stdout);
	free(out);
	return 0;
}
