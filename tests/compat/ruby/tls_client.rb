# A beanstalkd transcript over Ruby's own OpenSSL sockets (mutual TLS).
# usage: ruby tls_client.rb HOST PORT CA CERT KEY
# Prints one line per reply: the reply word, with the job body for RESERVED.
require 'openssl'
require 'socket'

host, port, ca, cert, key = ARGV
ctx = OpenSSL::SSL::SSLContext.new
ctx.min_version = OpenSSL::SSL::TLS1_2_VERSION
ctx.verify_mode = OpenSSL::SSL::VERIFY_PEER
ctx.ca_file = ca
ctx.cert = OpenSSL::X509::Certificate.new(File.read(cert))
ctx.key = OpenSSL::PKey.read(File.read(key))
tcp = TCPSocket.new(host, port.to_i)
ssl = OpenSSL::SSL::SSLSocket.new(tcp, ctx)
ssl.hostname = host
ssl.sync_close = true
ssl.connect
ssl.post_connection_check(host)

def reply(ssl)
  line = ssl.gets("\r\n").chomp("\r\n")
  words = line.split(' ')
  if words[0] == 'RESERVED'
    body = ssl.read(words[2].to_i + 2).chomp("\r\n")
    return [words, "RESERVED #{body}"]
  end
  [words, words[0] == 'USING' ? line : words[0]]
end

ssl.write("use ruby\r\n")
puts reply(ssl)[1]
ssl.write("put 0 0 60 12\r\nhi from ruby\r\n")
words, text = reply(ssl)
puts text
id = words[1]
ssl.write("watch ruby\r\nreserve-with-timeout 5\r\n")
reply(ssl)
words, text = reply(ssl)
puts text
ssl.write("delete #{words[1]}\r\n")
puts reply(ssl)[1]
exit(words[1] == id ? 0 : 1)
