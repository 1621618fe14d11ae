<?php
// One scenario through Pheanstalk 4 (Debian's php-pda-pheanstalk); prints one
// JSON line per step.  usage: php pheanstalk.php PORT
require_once 'Pheanstalk/autoload.php';

use Pheanstalk\JobId;
use Pheanstalk\Pheanstalk;

$p = Pheanstalk::create('127.0.0.1', (int)$argv[1]);

function show(string $step, $value): void
{
    echo json_encode([$step, $value], JSON_INVALID_UTF8_SUBSTITUTE | JSON_UNESCAPED_SLASHES), "\n";
}

function job($job)
{
    return $job === null ? null : [$job->getId(), bin2hex($job->getData())];
}

function attempt(string $step, callable $f): void
{
    try {
        show($step, $f());
    } catch (\Pheanstalk\Exception $e) {
        show($step, ['error' => (new \ReflectionClass($e))->getShortName(), 'message' => $e->getMessage()]);
    }
}

attempt('use', fn() => $p->useTube('compat-a') ? 'ok' : null);
attempt('list-tube-used', fn() => $p->listTubeUsed(true));
$hello = $p->put('hello', 10, 0, 60);
show('put hello', $hello->getId());
show('put world', $p->put('world', 5, 0, 60)->getId());
$later = $p->put('later', 5, 100, 60);
show('put later', $later->getId());
show('put crlf', $p->put("a\r\nb\x00\xff", 50, 0, 60)->getId());
attempt('watch', fn() => $p->watch('compat-a') ? 'ok' : null);
attempt('ignore default', fn() => $p->ignore('default') ? 'ok' : null);
attempt('list-tubes-watched', fn() => $p->listTubesWatched(true));
$j = $p->reserve();
show('reserve', job($j));
attempt('stats-job', fn() => $p->statsJob($j)->getArrayCopy());
$p->release($j, 20, 0);
show('release', 'ok');
attempt('peek-ready', fn() => job($p->peekReady()));
$j2 = $p->reserveWithTimeout(0);
show('reserve-with-timeout', job($j2));
$p->bury($j2, 30);
attempt('peek-buried', fn() => job($p->peekBuried()));
attempt('peek-delayed', fn() => job($p->peekDelayed()));
attempt('stats-tube', fn() => $p->statsTube('compat-a')->getArrayCopy());
attempt('kick', fn() => $p->kick(1));
attempt('kick-job', function () use ($p, $later) { $p->kickJob($later); return 'ok'; });
$j3 = $p->reserve();
show('reserve kicked', job($j3));
attempt('touch', function () use ($p, $j3) { $p->touch($j3); return 'ok'; });
attempt('delete', function () use ($p, $j3) { $p->delete($j3); return 'ok'; });
attempt('delete again', function () use ($p, $j3) { $p->delete($j3); return 'ok'; });
attempt('peek missing', fn() => job($p->peek(new JobId(999999))));
attempt('pause-tube', function () use ($p) { $p->pauseTube('compat-a', 0); return 'ok'; });
attempt('list-tubes', fn() => $p->listTubes());
while (($d = $p->reserveWithTimeout(0)) !== null) {
    show('drain', job($d));
    $p->delete($d);
}
show('drain end', null);
$big = '';
for ($i = 0; $i < 65535; $i++) {
    $big .= chr($i % 7 === 0 ? $i % 251 : 120);
}
$bigId = $p->put($big, 1, 0, 60)->getId();
$got = $p->reserve();
show('big', [$got->getId() === $bigId, strlen($got->getData()), $got->getData() === $big]);
$p->delete($got);
attempt('too big', fn() => $p->put(str_repeat('y', 65536), 1, 0, 60)->getId());
attempt('stats', fn() => $p->stats()->getArrayCopy());
$soon = $p->put('soon', 1, 0, 1);
$sent = microtime(true);
attempt('reserve ttr 1', fn() => job($p->reserve()));
attempt('deadline soon', fn() => job($p->reserveWithTimeout(1)));
show('in time', microtime(true) - $sent < 0.5);  // TTR 1 s: a stall would expire it
attempt('delete ttr 1', function () use ($p, $soon) { $p->delete($soon); return 'ok'; });
