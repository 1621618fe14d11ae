// One scenario through the `beanstalkd` npm package (promise API); prints one
// JSON line per step.  usage: node beanstalkd_npm.js PORT
'use strict';
const Beanstalkd = require('beanstalkd').default;

const client = new Beanstalkd('127.0.0.1', Number(process.argv[2]));

function show(step, value) {
  const plain = JSON.parse(JSON.stringify(value === undefined ? null : value, (k, v) =>
    (v && v.type === 'Buffer' && Array.isArray(v.data)) ? Buffer.from(v.data).toString('hex') : v));
  process.stdout.write(JSON.stringify([step, plain]) + '\n');
}

async function attempt(step, f) {
  try {
    show(step, await f());
  } catch (e) {
    show(step, { error: String(e && e.message ? e.message : e) });
  }
}

async function scenario() {
  await client.connect();
  await attempt('use', () => client.use('compat-a'));
  await attempt('list-tube-used', () => client.listTubeUsed());
  await attempt('put hello', () => client.put(10, 0, 60, 'hello'));
  await attempt('put world', () => client.put(5, 0, 60, 'world'));
  const later = await client.put(5, 100, 60, 'later');
  show('put later', later);
  await attempt('put crlf', () => client.put(50, 0, 60, Buffer.from('a\r\nb\x00\xff', 'latin1')));
  await attempt('watch', () => client.watch('compat-a'));
  await attempt('ignore default', () => client.ignore('default'));
  await attempt('ignore last', () => client.ignore('compat-a'));
  await attempt('list-tubes-watched', () => client.listTubesWatched());
  const [id1, body1] = await client.reserve();
  show('reserve', [id1, body1]);
  await attempt('stats-job', async () => {
    const s = await client.statsJob(id1);
    delete s.age; delete s['time-left'];
    return s;
  });
  await attempt('release', () => client.release(id1, 20, 0));
  await attempt('peek-ready', () => client.peekReady());
  const [id2, body2] = await client.reserveWithTimeout(0);
  show('reserve-with-timeout', [id2, body2]);
  await attempt('bury', () => client.bury(id2, 30));
  await attempt('peek-buried', () => client.peekBuried());
  await attempt('peek-delayed', () => client.peekDelayed());
  await attempt('stats-tube', () => client.statsTube('compat-a'));
  await attempt('kick-job', () => client.kickJob(later));
  const [id3] = await client.reserve();
  await attempt('touch', () => client.touch(id3));
  await attempt('delete', () => client.delete(id3));
  await attempt('delete again', () => client.delete(id3));
  await attempt('peek missing', () => client.peek(999999));
  await attempt('pause-tube', () => client.pauseTube('compat-a', 0));
  await attempt('list-tubes', () => client.listTubes());
  for (;;) {
    let got;
    try {
      got = await client.reserveWithTimeout(0);
    } catch (e) {
      show('drain end', String(e && e.message ? e.message : e));
      break;
    }
    show('drain', got);
    await client.delete(got[0]);
  }
  // a worker on its own connection blocks in reserve until a job is put
  const worker = new Beanstalkd('127.0.0.1', Number(process.argv[2]));
  await worker.connect();
  await worker.watch('compat-a');
  await worker.ignore('default');
  const waiting = worker.reserve();
  await attempt('put for worker', () => client.put(2, 0, 60, 'wake'));
  const woke = await waiting;
  show('worker reserve', woke);
  await attempt('worker delete', () => worker.delete(woke[0]));
  const big = Buffer.alloc(65535, 'x');
  for (let i = 0; i < big.length; i += 7) big[i] = i % 251;
  const bigId = await client.put(1, 0, 60, big);
  const [gotId, gotBody] = await client.reserve();
  show('big', [gotId === bigId, gotBody.length, Buffer.compare(gotBody, big) === 0]);
  await client.delete(gotId);
  await attempt('too big', () => client.put(1, 0, 60, Buffer.alloc(65536, 'y')));
  await attempt('stats', () => client.stats());
  const soonId = await client.put(1, 0, 1, 'soon');
  const sent = performance.now();
  await attempt('reserve ttr 1', () => client.reserve());
  await attempt('deadline soon', () => client.reserveWithTimeout(1));
  show('in time', performance.now() - sent < 500);  // TTR 1 s: a stall would expire it
  await attempt('delete ttr 1', () => client.delete(soonId));
  await worker.quit();
  await client.quit();
}

scenario().catch((e) => { show('crash', String(e && e.stack ? e.stack : e)); process.exit(1); });
