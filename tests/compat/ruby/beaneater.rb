# One scenario through beaneater (Debian's ruby-beaneater); prints one JSON
# line per step.  usage: ruby beaneater.rb PORT
require 'beaneater'
require 'json'

$stdout.sync = true
bs = Beaneater.new("127.0.0.1:#{ARGV[0]}")

def show(step, value)
  puts JSON.generate([step, value])
end

def job(j)
  j.nil? ? nil : [j.id, j.body.unpack1('H*')]
end

def attempt(step)
  show(step, yield)
rescue Beaneater::NotFoundError, Beaneater::TimedOutError, Beaneater::NotIgnoredError,
       Beaneater::UnexpectedResponse => e
  show(step, { 'error' => e.class.name.split('::').last, 'status' => e.status })
end

tube = bs.tubes['compat-a']
show 'put hello', tube.put('hello', pri: 10, delay: 0, ttr: 60)
show 'put world', tube.put('world', pri: 5, delay: 0, ttr: 60)
later = tube.put('later', pri: 5, delay: 100, ttr: 60)
show 'put later', later
show 'put crlf', tube.put("a\r\nb\x00\xff".b, pri: 50, delay: 0, ttr: 60)
attempt('list-tube-used') { bs.tubes.used.name }
attempt('watch only') { bs.tubes.watch!('compat-a'); 'ok' }
attempt('list-tubes-watched') { bs.tubes.watched.map(&:name) }
j = bs.tubes.reserve
show 'reserve', job(j)
attempt('stats-job') { j.stats.to_h.reject { |k, _| %w[age time-left].include?(k.to_s) } }
attempt('release') { j.release(pri: 20, delay: 0) }
attempt('peek-ready') { job(tube.peek(:ready)) }
j2 = bs.tubes.reserve(0)
show 'reserve-with-timeout', job(j2)
attempt('bury') { j2.bury(pri: 30) }
attempt('peek-buried') { job(tube.peek(:buried)) }
attempt('peek-delayed') { job(tube.peek(:delayed)) }
attempt('stats-tube') { tube.stats.to_h }
attempt('kick') { tube.kick(1) }
attempt('kick-job') { bs.jobs.find(later[:id]).kick }
j3 = bs.tubes.reserve
show 'reserve kicked', job(j3)
attempt('touch') { j3.touch }
attempt('delete') { j3.delete }
attempt('delete again') { bs.tubes.transmit("delete #{j3.id}") }
attempt('peek missing') { job(bs.jobs.find(999_999)) }
attempt('pause-tube') { tube.pause(0) }
attempt('list-tubes') { bs.tubes.all.map(&:name) }
loop do
  d = begin
    bs.tubes.reserve(0)
  rescue Beaneater::TimedOutError
    nil
  end
  break if d.nil?
  show 'drain', job(d)
  d.delete
end
big = (0...65_535).map { |i| (i % 7).zero? ? i % 251 : 120 }.pack('C*')
big_id = tube.put(big, pri: 1, delay: 0, ttr: 60)[:id]
got = bs.tubes.reserve
show 'big', [got.id == big_id, got.body.bytesize, got.body.b == big]
got.delete
attempt('too big') { tube.put('y' * 65_536, pri: 1, delay: 0, ttr: 60) }
attempt('stats') { bs.tubes.transmit('stats')[:body] }
soon = tube.put('soon', pri: 1, delay: 0, ttr: 1)
sent = Process.clock_gettime(Process::CLOCK_MONOTONIC)
attempt('reserve ttr 1') { job(bs.tubes.reserve) }
attempt('deadline soon') { job(bs.tubes.reserve(1)) }
show 'in time', Process.clock_gettime(Process::CLOCK_MONOTONIC) - sent < 0.5 # TTR 1 s: a stall would expire it
attempt('delete ttr 1') { bs.jobs.find(soon[:id]).delete }
bs.close
