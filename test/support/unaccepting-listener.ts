// A listener that never accepts: a child process listens with a backlog of 1, then blocks its
// event loop. Once its accept queue is full the kernel drops further SYNs, so a connect to it
// hangs (as to a blackholed host) until the connect timeout or the kernel's SYN retries give up.

import { type ChildProcess, spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { connect, type Socket } from 'node:net'

/** A running {@link unacceptingListener}. */
export interface UnacceptingListener {
  readonly port: number
  /** Destroys the connections that fill its queue and kills its process. */
  stop(): void
}

/** Starts an {@link UnacceptingListener} on a free loopback port, its accept queue full. */
export async function unacceptingListener(): Promise<UnacceptingListener> {
  const child: ChildProcess = spawn(process.execPath, [
    '-e',
    `const s = require('node:net').createServer().listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
       process.stdout.write(String(s.address().port) + '\\n', () => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0))
     })`,
  ])
  const port = await new Promise<number>((resolve) =>
    child.stdout?.once('data', (d: Buffer) => resolve(Number(String(d).trim()))),
  )
  const fillers = await fillAcceptQueue(port)
  return {
    port,
    stop() {
      for (const socket of fillers) socket.destroy()
      child.kill('SIGKILL')
    },
  }
}

/**
 * Fills the accept queue of a listener that accepts no more: the first connections complete,
 * the others hang. Destroy the sockets returned once done.
 */
export async function fillAcceptQueue(port: number): Promise<Socket[]> {
  const fillers: Socket[] = []
  await new Promise<void>((resolve) => {
    for (let i = 0; i < 4; i++) {
      const socket = connect(port, '127.0.0.1', resolve)
      socket.on('error', () => {})
      fillers.push(socket)
    }
  })
  return fillers
}

/**
 * Local ports of this host's IPv4 sockets still opening a connection (SYN sent, no answer) to
 * 127.0.0.1:`port`, from /proc/net/tcp (Linux): what is left of connects nobody gave up on.
 */
export function connectsUnderWay(port: number): number[] {
  const rows = readFileSync('/proc/net/tcp', 'latin1').split('\n').slice(1)
  const remote = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`
  const local: number[] = []
  for (const row of rows) {
    const [, from, to, state] = row.trim().split(/\s+/)
    // 02: SYN_SENT.
    if (to === remote && state === '02' && from !== undefined)
      local.push(Number.parseInt(from.split(':')[1] ?? '0', 16))
  }
  return local
}
