// Two small contracts of the admin API's server: HEAD is answered wherever GET is (a prober may
// check /metrics with HEAD, as the metrics server allows), and close() is idempotent in what it
// promises: a second call resolves only once the server has really closed, like the first.
import { request } from 'node:http'
import { describe, expect, it } from 'vitest'
import { startTestAdmin } from './admin-support.js'

function admin() {
  return startTestAdmin({ backend: { metricsText: async () => 'up 1\n' } })
}

function send(port: number, method: string, path: string) {
  return new Promise<{ status: number; body: string; type: string | undefined }>(
    (resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, method, path }, (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (chunk: string) => {
          body += chunk
        })
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body, type: res.headers['content-type'] }),
        )
      })
      req.on('error', reject)
      req.end()
    },
  )
}

describe('admin API server', () => {
  it('answers HEAD /metrics with the headers of GET and no body', async () => {
    const server = await admin()
    try {
      const { port } = server.address()
      const get = await send(port, 'GET', '/metrics')
      const head = await send(port, 'HEAD', '/metrics')
      expect(get).toMatchObject({ status: 200, body: 'up 1\n' })
      expect(head).toEqual({ status: 200, body: '', type: get.type })
    } finally {
      await server.close()
    }
  })

  it('resolves a second close() only once the server has closed', async () => {
    const server = await admin()
    const order: string[] = []
    const first = server.close().then(() => order.push('first'))
    const second = server.close().then(() => order.push('second'))
    await Promise.all([first, second])
    expect(order).toEqual(['first', 'second'])
    await expect(send(server.address().port, 'GET', '/healthz')).rejects.toThrow(/ECONNREFUSED/)
  })
})
