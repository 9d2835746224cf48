// A tiny authoritative DNS server on UDP loopback (node:dgram) for discovery tests: it answers
// A, AAAA and SRV questions from a zone the test edits, with the TTL the test sets, and
// records every question it gets. Point a `dns.promises.Resolver` at it with
// `setServers(['127.0.0.1:<port>'])`.

import { createSocket, type RemoteInfo } from 'node:dgram'
import { isIPv6 } from 'node:net'

/** A record type the server answers. */
export type DnsRecordType = 'A' | 'AAAA' | 'SRV'

/** One answer record. */
export type DnsRecord =
  | { readonly type: 'A' | 'AAAA'; readonly address: string; readonly ttl: number }
  | {
      readonly type: 'SRV'
      readonly target: string
      readonly port: number
      readonly priority?: number
      readonly weight?: number
      readonly ttl: number
    }

/** A running test DNS server. */
export interface TestDnsServer {
  readonly port: number
  /** `127.0.0.1:<port>`, for `setServers`. */
  readonly address: string
  /** Questions received, in order. */
  readonly queries: Array<{ readonly name: string; readonly type: DnsRecordType | number }>
  /** Replaces the records of `name` and `type` (an empty list answers NXDOMAIN). */
  set(name: string, type: DnsRecordType, records: readonly DnsRecord[]): void
  /** While true, every question gets SERVFAIL. */
  failing: boolean
  close(): Promise<void>
}

const typeCodes: Record<DnsRecordType, number> = { A: 1, AAAA: 28, SRV: 33 }
const codeTypes = new Map<number, DnsRecordType>([
  [1, 'A'],
  [28, 'AAAA'],
  [33, 'SRV'],
])

function encodeName(name: string): Buffer {
  const parts = name.replace(/\.$/, '').split('.')
  const bytes: number[] = []
  for (const part of parts) {
    bytes.push(part.length, ...Buffer.from(part, 'ascii'))
  }
  bytes.push(0)
  return Buffer.from(bytes)
}

function ipv6Bytes(address: string): Buffer {
  const [head, tail] = address.split('::') as [string, string | undefined]
  const headParts = head === '' ? [] : head.split(':')
  const tailParts = tail === undefined || tail === '' ? [] : tail.split(':')
  const missing = 8 - headParts.length - tailParts.length
  const groups = [
    ...headParts,
    ...Array<string>(tail === undefined ? 0 : missing).fill('0'),
    ...tailParts,
  ]
  const out = Buffer.alloc(16)
  for (const [i, g] of groups.entries()) out.writeUInt16BE(Number.parseInt(g, 16), i * 2)
  return out
}

function rdata(record: DnsRecord): Buffer {
  if (record.type !== 'SRV') {
    if (record.type === 'A') return Buffer.from(record.address.split('.').map(Number))
    if (!isIPv6(record.address)) throw new Error(`not IPv6: ${record.address}`)
    return ipv6Bytes(record.address)
  }
  const head = Buffer.alloc(6)
  head.writeUInt16BE(record.priority ?? 0, 0)
  head.writeUInt16BE(record.weight ?? 0, 2)
  head.writeUInt16BE(record.port, 4)
  return Buffer.concat([head, encodeName(record.target)])
}

/** Starts the server on 127.0.0.1 and a free UDP port. */
export async function startDnsServer(): Promise<TestDnsServer> {
  const zone = new Map<string, readonly DnsRecord[]>()
  const queries: Array<{ name: string; type: DnsRecordType | number }> = []
  const socket = createSocket('udp4')
  const server: TestDnsServer = {
    port: 0,
    address: '',
    queries,
    failing: false,
    set(name, type, records) {
      zone.set(`${name.toLowerCase()}|${type}`, records)
    },
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  }
  socket.on('message', (message: Buffer, remote: RemoteInfo) => {
    if (message.length < 12) return
    // Question: labels from offset 12, then type and class.
    let offset = 12
    const labels: string[] = []
    while (offset < message.length && message[offset] !== 0) {
      const length = message[offset]!
      labels.push(message.subarray(offset + 1, offset + 1 + length).toString('ascii'))
      offset += 1 + length
    }
    offset += 1
    const qtype = message.readUInt16BE(offset)
    const questionEnd = offset + 4
    const name = labels.join('.').toLowerCase()
    const type = codeTypes.get(qtype)
    queries.push({ name, type: type ?? qtype })
    const records = type === undefined ? undefined : zone.get(`${name}|${type}`)
    const header = Buffer.alloc(12)
    header.writeUInt16BE(message.readUInt16BE(0), 0)
    const rd = message.readUInt16BE(2) & 0x0100
    const rcode = server.failing ? 2 : records === undefined || records.length === 0 ? 3 : 0
    header.writeUInt16BE(0x8000 | 0x0400 | rd | 0x0080 | rcode, 2)
    header.writeUInt16BE(1, 4)
    const answers: Buffer[] = []
    if (rcode === 0 && records !== undefined) {
      for (const record of records) {
        const data = rdata(record)
        const rr = Buffer.alloc(12)
        rr.writeUInt16BE(0xc00c, 0) // name: pointer to the question
        rr.writeUInt16BE(typeCodes[record.type], 2)
        rr.writeUInt16BE(1, 4)
        rr.writeUInt32BE(record.ttl, 6)
        rr.writeUInt16BE(data.length, 10)
        answers.push(rr, data)
      }
    }
    header.writeUInt16BE(answers.length / 2, 6)
    const reply = Buffer.concat([header, message.subarray(12, questionEnd), ...answers])
    socket.send(reply, remote.port, remote.address)
  })
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve))
  const port = socket.address().port
  Object.assign(server, { port, address: `127.0.0.1:${port}` })
  return server
}
