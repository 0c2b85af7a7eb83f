// Prints session tokens made by the real encoders, for chatd's tests.
//
// stdin:  {"secret": "...", "tokens": [{"kind": "v4" | "v5", "token": {...},
//          "salt": "authjs.session-token", "maxAge": 2592000}, ...]}
// stdout: a JSON array of the encoded tokens, in the same order.
//
// v4 is next-auth 4's `encode({token, secret, maxAge})` from next-auth/jwt
// (A256GCM); v5 is Auth.js's `encode({token, secret, salt, maxAge})` from
// @auth/core/jwt (A256CBC-HS512), the salt being the session cookie's name.
import { encode as encodeV4 } from "next-auth/jwt";
import { encode as encodeV5 } from "@auth/core/jwt";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString("utf8"));

const out = [];
for (const item of request.tokens) {
  const params = { token: item.token, secret: request.secret };
  if (item.maxAge !== undefined) params.maxAge = item.maxAge;
  if (item.kind === "v4") {
    if (item.salt !== undefined) params.salt = item.salt;
    out.push(await encodeV4(params));
  } else if (item.kind === "v5") {
    out.push(await encodeV5({ ...params, salt: item.salt }));
  } else {
    throw new Error(`unknown kind ${item.kind}`);
  }
}
process.stdout.write(JSON.stringify(out) + "\n");
