// One scenario through fivebeans (callback API); prints one JSON line per step.
// usage: node fivebeans.js PORT
'use strict';
const fivebeans = require('fivebeans');

const port = Number(process.argv[2]);
const client = new fivebeans.client('127.0.0.1', port);

function on(c, name, ...args) {
  return new Promise((resolve) => {
    c[name](...args, (err, ...res) => resolve(err ? { error: String(err) } : res));
  });
}

function call(name, ...args) {
  return on(client, name, ...args);
}

function connected(c) {
  return new Promise((resolve, reject) => c.on('connect', resolve).on('error', reject).connect());
}

function show(step, value) {
  const plain = JSON.parse(JSON.stringify(value, (k, v) =>
    (v && v.type === 'Buffer' && Array.isArray(v.data)) ? Buffer.from(v.data).toString('hex') : v));
  process.stdout.write(JSON.stringify([step, plain]) + '\n');
}

async function scenario() {
  show('use', await call('use', 'compat-a'));
  show('list-tube-used', await call('list_tube_used'));
  show('put hello', await call('put', 10, 0, 60, 'hello'));
  show('put world', await call('put', 5, 0, 60, 'world'));
  show('put later', await call('put', 5, 100, 60, 'later'));
  show('put crlf', await call('put', 50, 0, 60, Buffer.from('a\r\nb\x00\xff', 'latin1')));
  show('watch', await call('watch', 'compat-a'));
  show('ignore default', await call('ignore', 'default'));
  show('ignore last', await call('ignore', 'compat-a'));
  show('list-tubes-watched', await call('list_tubes_watched'));
  const [id1, body1] = await call('reserve');
  show('reserve', [id1, body1]);
  show('stats-job', await call('stats_job', id1));
  show('release', await call('release', id1, 20, 0));
  show('peek-ready', await call('peek_ready'));
  const [id2, body2] = await call('reserve_with_timeout', 0);
  show('reserve-with-timeout', [id2, body2]);
  show('bury', await call('bury', id2, 30));
  show('peek-buried', await call('peek_buried'));
  show('peek-delayed', await call('peek_delayed'));
  show('stats-tube', await call('stats_tube', 'compat-a'));
  show('kick', await call('kick', 1));
  const [delayed] = await call('peek_delayed');
  show('kick-job', await call('kick_job', delayed));
  const [id3] = await call('reserve');
  show('touch', await call('touch', id3));
  show('delete', await call('destroy', id3));
  show('delete again', await call('destroy', id3));
  show('peek missing', await call('peek', 999999));
  show('pause-tube', await call('pause_tube', 'compat-a', 0));
  show('list-tubes', await call('list_tubes'));
  for (;;) {
    const got = await call('reserve_with_timeout', 0);
    if (got.error) { show('drain end', got); break; }
    show('drain', [got[0], got[1]]);
    show('drain delete', await call('destroy', got[0]));
  }
  // a worker on its own connection blocks in reserve until a job is put
  const worker = new fivebeans.client('127.0.0.1', port);
  await connected(worker);
  await on(worker, 'watch', 'compat-a');
  await on(worker, 'ignore', 'default');
  const waiting = on(worker, 'reserve');
  show('put for worker', await call('put', 2, 0, 60, 'wake'));
  const woke = await waiting;
  show('worker reserve', woke);
  show('worker delete', await on(worker, 'destroy', woke[0]));
  const big = Buffer.alloc(65535, 'x');
  for (let i = 0; i < big.length; i += 7) big[i] = i % 251;
  const [bigId] = await call('put', 1, 0, 60, big);
  const [gotId, gotBody] = await call('reserve');
  show('big', [gotId === bigId, gotBody.length, Buffer.compare(gotBody, big) === 0]);
  show('big delete', await call('destroy', gotId));
  show('too big', await call('put', 1, 0, 60, Buffer.alloc(65536, 'y')));
  show('stats', await call('stats'));
  const [soonId] = await call('put', 1, 0, 1, 'soon');
  const sent = performance.now();
  show('reserve ttr 1', await call('reserve'));
  show('deadline soon', await call('reserve_with_timeout', 1));
  show('in time', performance.now() - sent < 500);  // TTR 1 s: a stall would expire it
  show('delete ttr 1', await call('destroy', soonId));
  worker.end();
  client.end();
}

client
  .on('connect', () => scenario().catch((e) => { show('crash', String(e)); process.exit(1); }))
  .on('error', (e) => { show('connection error', String(e)); process.exit(1); })
  .connect();
