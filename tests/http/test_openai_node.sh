#!/usr/bin/env bash
# lorad-http with the official OpenAI client library for Node.js (npm
# package "openai"), installed into a temporary folder: a completion, a
# stream, a chat completion whole and streamed, an unknown model, and a
# stream abandoned mid-way (its request is cancelled in the daemon). Exits 77 (skipped) where node or npm is missing
# or the package cannot be fetched.
#   usage: test_openai_node.sh BUILD_BIN_DIR REPO_ROOT
set -u
bin=$1
root=$2
command -v node >/dev/null || { echo "node is not installed: skipped"; exit 77; }
command -v npm >/dev/null || { echo "npm is not installed: skipped"; exit 77; }
cd "$root" || exit 1

dir=$(mktemp -d /tmp/lorad-openai-node.XXXXXX)
dpid= gpid=
cleanup() {
	for p in $gpid $dpid; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*"
	tail -20 "$dir/lorad.log" "$dir/http.log" 2>/dev/null
	exit 1
}

if ! (cd "$dir" && timeout 180 npm install --silent --no-audit --no-fund openai@4 >"$dir/npm.log" 2>&1); then
	echo "npm could not install the openai package (no registry?): skipped"
	tail -3 "$dir/npm.log"
	exit 77
fi

# a model slow enough that a long stream still runs when it is abandoned,
# with the demo's tokenizer (base only) and ChatML's two tokens added, its
# chat format forced
"$bin/lorad-mkmodel" "$dir/slow" --vocab 642 --hidden 1024 --layers 8 --heads 16 --kv-heads 4 \
	--ffn 2816 --max-pos 4096 --dtype f32 --seed 5 >/dev/null || fail "lorad-mkmodel"
cp demo/model/tokenizer.json "$dir/slow/"
[ -f demo/model/tokenizer_config.json ] && cp demo/model/tokenizer_config.json "$dir/slow/"
node -e '
const fs = require("fs"), f = process.argv[1], t = JSON.parse(fs.readFileSync(f));
for (const [id, content] of [[640, "<|im_start|>"], [641, "<|im_end|>"]])
	t.added_tokens.push({ id, content, single_word: false, lstrip: false, rstrip: false,
			      normalized: false, special: true });
fs.writeFileSync(f, JSON.stringify(t));' "$dir/slow/tokenizer.json" || fail "ChatML tokens"
"$bin/lorad" --model "$dir/slow" --socket "$dir/l.sock" --admin-socket "$dir/a.sock" \
	--state-dir "$dir/state" --threads 1 --chat-template chatml >"$dir/lorad.log" 2>&1 &
dpid=$!
for _ in $(seq 100); do "$bin/loradctl" --socket "$dir/a.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
"$bin/lorad-http" --listen "127.0.0.1:$port" --socket "$dir/l.sock" --admin-socket "$dir/a.sock" \
	>"$dir/http.log" 2>&1 &
gpid=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.05; done

want=$("$bin/lorad-cli" --socket "$dir/l.sock" --prompt "How many orders?" --max-tokens 8 \
	--temperature 0 2>/dev/null)
cat >"$dir/t.mjs" <<'EOF'
import OpenAI from "openai";
const [port, want] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: "unused", maxRetries: 0 });
const check = (c, m) => { if (!c) { console.error("FAIL: " + m); process.exit(1); } };

const r = await client.completions.create({ model: "base", prompt: "How many orders?", max_tokens: 8, temperature: 0 });
check(r.choices[0].text === want, `completion ${JSON.stringify(r.choices[0].text)} != ${JSON.stringify(want)}`);
check(r.object === "text_completion" && r.choices[0].lorad_version === "base", "response shape");

let text = "", finish = null;
const s = await client.completions.create({ model: "base", prompt: "How many orders?", max_tokens: 8, temperature: 0, stream: true });
for await (const chunk of s) {
	text += chunk.choices[0].text;
	finish = chunk.choices[0].finish_reason ?? finish;
}
check(text === want && (finish === "stop" || finish === "length"), `stream ${JSON.stringify(text)}`);

const msgs = [{ role: "system", content: "Be brief." }, { role: "user", content: "How many orders?" }];
const c = await client.chat.completions.create({ model: "base", messages: msgs, max_tokens: 4, temperature: 0 });
check(c.object === "chat.completion" && c.choices[0].message.role === "assistant" &&
      typeof c.choices[0].message.content === "string" &&
      (c.choices[0].finish_reason === "stop" || c.choices[0].finish_reason === "length") &&
      c.usage.completion_tokens <= 4 && c.usage.prompt_tokens > 0, `chat ${JSON.stringify(c)}`);
let ctext = "", role = null, cfinish = null;
const cs = await client.chat.completions.create({ model: "base", messages: msgs, max_tokens: 4, temperature: 0, stream: true });
for await (const chunk of cs) {
	check(chunk.object === "chat.completion.chunk", `chunk ${JSON.stringify(chunk)}`);
	role = role ?? chunk.choices[0].delta.role;
	ctext += chunk.choices[0].delta.content ?? "";
	cfinish = chunk.choices[0].finish_reason ?? cfinish;
}
check(role === "assistant" && ctext === c.choices[0].message.content && cfinish === c.choices[0].finish_reason,
      `chat stream ${JSON.stringify(ctext)} ${role} ${cfinish}`);

try {
	await client.completions.create({ model: "nosuch", prompt: "x" });
	check(false, "an unknown model succeeded");
} catch (e) {
	check(e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === "model_not_found", `unknown model: ${e}`);
}
const models = await client.models.list();
const ids = models.data.map((m) => m.id);
check(ids.includes("base") && ids.includes("auto"), `models ${ids}`);

// a stream left after a few chunks: the gateway cancels its request
const ctl = new AbortController();
const long = await client.completions.create({ model: "base", prompt: "a", max_tokens: 3000, ignore_eos: true, stream: true },
	{ signal: ctl.signal });
let n = 0;
try {
	for await (const _ of long) { if (++n === 3) ctl.abort(); }
} catch (e) { /* aborted */ }
check(n >= 3, "the long stream gave no chunks");
console.log("node openai: ok");
EOF
node "$dir/t.mjs" "$port" "$want" || fail "the OpenAI client"
for _ in $(seq 100); do
	n=$("$bin/loradctl" --socket "$dir/a.sock" --json status | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).inflight))')
	[ "$n" = 0 ] && break
	sleep 0.1
done
[ "$n" = 0 ] || fail "the abandoned stream's request still runs ($n in flight)"
echo "ok"
