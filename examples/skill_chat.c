/* SPDX-License-Identifier: MIT */
/*
 * skill_chat: send one text prompt to a lorad skill and print the answer as
 * it is generated.
 *
 *   cc skill_chat.c $(pkg-config --cflags --libs lorad) -o skill_chat
 *   ./skill_chat /run/lorad/lorad.sock sql "Which customers bought a 'lamp'?"
 *
 * SKILL is "base", a skill registered in the daemon, or "auto" (the daemon
 * picks the skill from the prompt and says which one it chose).
 */
#include <stdio.h>
#include <string.h>

#include <lorad/lorad.h>

int main(int argc, char **argv)
{
	static uint32_t ids[128];          /* the generated token ids land here */
	static char text[8192];            /* and the generated text, streamed */
	struct lorad *c;
	struct lorad_event ev[8];
	int ret, n, done = 0;

	if (argc != 4) {
		fprintf(stderr, "usage: %s SOCKET SKILL PROMPT\n", argv[0]);
		return 2;
	}
	ret = lorad_connect(argv[1], NULL, &c);
	if (ret) {
		fprintf(stderr, "cannot connect to %s: %s\n", argv[1], lorad_strerror(ret));
		return 1;
	}
	struct lorad_request req = {
		.user_data = 1,
		.skill = argv[2],
		.prompt_text = argv[3],
		.prompt_text_len = (uint32_t)strlen(argv[3]),
		.max_tokens = 128,                     /* greedy: temperature 0 */
		.out = ids,
		.out_text = text,
		.out_text_cap = sizeof(text),
	};
	ret = lorad_submit(c, &req);
	while (!ret && !done) {
		n = lorad_wait(c, ev, 8, 30000);       /* milliseconds */
		if (n < 0) {
			ret = n;
			break;
		}
		for (int i = 0; i < n; i++) {
			/* ev.text_new bytes were appended to text, never half a character */
			fwrite(text + ev[i].text_len - ev[i].text_new, 1, ev[i].text_new, stdout);
			fflush(stdout);
			if (!(ev[i].flags & LORAD_EV_FINAL))
				continue;
			done = 1;
			if (ev[i].res < 0) {                /* the daemon refused or failed it */
				fprintf(stderr, "\nrequest failed: %s (field: %s)\n",
					lorad_strerror(ev[i].res), lorad_field_name(ev[i].field));
				ret = ev[i].res;
			} else {
				printf("\n");
				fprintf(stderr, "[skill %s, %u tokens, %s]\n",
					ev[i].skill[0] ? ev[i].skill : strcmp(argv[2], "auto") ? argv[2] : "base",
					ev[i].n_tokens,
					lorad_finish_name(ev[i].finish));
			}
		}
	}
	if (ret && !done)
		fprintf(stderr, "lorad: %s\n", lorad_strerror(ret));
	lorad_close(c);
	return ret ? 1 : 0;
}
