// nano-banana, audited: a Node.js stand-in for the seeds' image generator, as a
// plain node:http service (no framework) whose every action is audited with
// audit.js. The "model" draws no picture: it writes a small placeholder PNG.
//
//   node app.js serve [--port 8080]   POST /login {"user","password"} -> {"session"}
//                                     POST /images {"prompt","model","aspectRatio"} -> {"path"}
//                                     DELETE /images/<file name>
//                                     (the last two with "authorization: Bearer <session>")
//   node app.js demo                  a session against itself on a free port: a failed and
//                                     a good login, two generations (one refused), a delete
//
// Each request runs in its own span, as @opentelemetry/instrumentation-http
// would make it, and the response's `traceresponse` header names it; the
// demo prints one JSON line per request: the action, the status, that trace
// id and span id, and the path made or the error shown. The audit events
// go to OTEL_EXPORTER_OTLP_ENDPOINT (see audit.js).

import http from 'node:http';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdir, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  context,
  diag,
  DiagConsoleLogger,
  DiagLogLevel,
  trace,
  SpanKind,
  SpanStatusCode,
} from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { TracerProvider } from '@opentelemetry/sdk-trace';
import { Auditor } from './audit.js';

const SERVICE = 'nano-banana';
const MODELS = ['gemini-2.5-flash-image', 'gemini-3-pro-image-preview'];
const ASPECT_RATIOS = ['1:1', '3:4', '4:3', '9:16', '16:9'];
// The demo's accounts.
const USERS = { alice: 'wonderland', bob: 'builder' };
// The "generated image": a 1x1 yellow PNG.
const PLACEHOLDER_PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4/9AUAAT4AhZLkYulAAAAAElFTkSuQmCC',
  'base64',
);
const OUTPUT_DIR = process.env.NANO_BANANA_OUTPUT || path.join(tmpdir(), 'nano-banana');

// The SDK's own troubles (an export that failed) to stderr: an audit event
// that cannot be sent must not go unnoticed.
diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.WARN);

// Spans are made (so records carry a trace id) but not exported here; a
// service would add its trace exporter (Jaeger, Tempo) to this provider.
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
trace.setGlobalTracerProvider(
  new TracerProvider({ resource: resourceFromAttributes({ 'service.name': SERVICE }) }),
);
const tracer = trace.getTracer('nano-banana.http');
const auditor = new Auditor(SERVICE);
const sessions = new Map(); // session token -> user name

/** A client error: its message goes back to the caller with `status`. */
class RequestError extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'RequestError';
    this.status = status;
  }
}

const generateImage = auditor.imageGeneration(async ({ prompt, model, aspectRatio }) => {
  if (!prompt?.trim()) throw new RequestError(400, 'the prompt is empty');
  if (!MODELS.includes(model)) {
    throw new RequestError(400, `unknown model "${model}"; choose one of ${MODELS.join(', ')}`);
  }
  if (!ASPECT_RATIOS.includes(aspectRatio)) {
    throw new RequestError(
      400,
      `unsupported aspect ratio "${aspectRatio}"; choose one of ${ASPECT_RATIOS.join(', ')}`,
    );
  }
  await mkdir(OUTPUT_DIR, { recursive: true });
  const file = path.join(OUTPUT_DIR, `${randomBytes(16).toString('hex')}.png`);
  await writeFile(file, PLACEHOLDER_PNG);
  return file;
});

function sameSecret(given, expected) {
  const a = Buffer.from(String(given));
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Who sent `req`, as audit.js wants it. */
function actorOf(req, user) {
  return {
    id: user,
    name: user,
    clientAddress: req.socket.remoteAddress,
    deviceName: req.headers['user-agent'],
  };
}

function signedInUser(req) {
  const session = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
  const user = session && sessions.get(session);
  if (!user) throw new RequestError(401, 'sign in first');
  return user;
}

async function readJson(req) {
  let text = '';
  for await (const chunk of req) text += chunk;
  try {
    return JSON.parse(text || '{}');
  } catch {
    throw new RequestError(400, 'the body is not JSON');
  }
}

/** The route's answer: [status, JSON body or null]. */
async function route(req) {
  if (req.method === 'POST' && req.url === '/login') {
    const { user, password } = await readJson(req);
    const ok = Object.hasOwn(USERS, user) && sameSecret(password, USERS[user]);
    auditor.login(String(user), {
      success: ok,
      actor: actorOf(req),
      reason: ok ? undefined : 'wrong user name or password',
    });
    if (!ok) throw new RequestError(401, 'wrong user name or password');
    const session = randomBytes(16).toString('hex');
    sessions.set(session, user);
    return [200, { session }];
  }
  if (req.method === 'POST' && req.url === '/images') {
    const user = signedInUser(req);
    const { prompt, model = MODELS[0], aspectRatio = '1:1' } = await readJson(req);
    const file = await generateImage({ prompt, model, aspectRatio }, actorOf(req, user));
    return [201, { path: file }];
  }
  if (req.method === 'DELETE' && req.url.startsWith('/images/')) {
    const user = signedInUser(req);
    const file = path.join(OUTPUT_DIR, path.basename(decodeURIComponent(req.url.slice(8))));
    try {
      await unlink(file);
    } catch (error) {
      if (error.code === 'ENOENT') throw new RequestError(404, 'no such image');
      throw error;
    }
    auditor.imageDeleted(file, { actor: actorOf(req, user) });
    return [204, null];
  }
  throw new RequestError(404, 'no such route');
}

function handle(req, res) {
  const name = `${req.method} ${req.url.startsWith('/images/') ? '/images/:name' : req.url}`;
  tracer.startActiveSpan(name, { kind: SpanKind.SERVER }, async (span) => {
    const { traceId, spanId } = span.spanContext();
    res.setHeader('traceresponse', `00-${traceId}-${spanId}-01`);
    let status, body;
    try {
      [status, body] = await route(req);
    } catch (error) {
      status = error instanceof RequestError ? error.status : 500;
      body = { error: status === 500 ? 'internal error' : error.message };
      if (status === 500) span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
    }
    span.setAttribute('http.response.status_code', status);
    if (body === null) res.writeHead(status).end();
    else res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    span.end();
  });
}

/** A session against a server on a free port; one JSON line per request. */
async function demo() {
  const server = http.createServer(handle);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  let session;
  const call = async (action, method, url, body) => {
    const response = await fetch(base + url, {
      method,
      headers: {
        'user-agent': 'nano-banana-demo',
        ...(session ? { authorization: `Bearer ${session}` } : {}),
        ...(body ? { 'content-type': 'application/json' } : {}),
      },
      body: body && JSON.stringify(body),
    });
    const [, traceId, spanId] = response.headers.get('traceresponse').split('-');
    const answer = response.status === 204 ? {} : await response.json();
    const { session: _, ...shown } = answer;
    const line = { action, status: response.status, trace_id: traceId, span_id: spanId, ...shown };
    console.log(JSON.stringify(line));
    return answer;
  };
  try {
    await call('login', 'POST', '/login', { user: 'alice', password: 'wonderlnad' });
    ({ session } = await call('login', 'POST', '/login', { user: 'alice', password: 'wonderland' }));
    const { path: file } = await call('generate', 'POST', '/images', {
      prompt: 'a banana surfing a wave at sunset',
      model: 'gemini-2.5-flash-image',
      aspectRatio: '16:9',
    });
    await call('generate', 'POST', '/images', { prompt: 'a banana portrait', aspectRatio: '2:7' });
    await call('delete', 'DELETE', `/images/${encodeURIComponent(path.basename(file))}`);
  } finally {
    server.close();
    // Sends the batched events now (the exit hook would too).
    await auditor.shutdown();
  }
}

const [command = 'serve', ...rest] = process.argv.slice(2);
if (command === 'demo') {
  await demo();
} else if (command === 'serve') {
  const portFlag = rest.indexOf('--port');
  const port = Number(portFlag >= 0 ? rest[portFlag + 1] : (process.env.PORT ?? 8080));
  http.createServer(handle).listen(port, '127.0.0.1', () => {
    console.error(`nano-banana listening on http://127.0.0.1:${port}`);
  });
} else {
  console.error(`usage: node app.js [serve [--port N] | demo]; unknown command "${command}"`);
  process.exit(2);
}
