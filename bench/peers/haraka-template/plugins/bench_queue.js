// bench_queue: queue hook of the benchmark's Haraka peer.
//  mode=discard -> accept and drop the message
//  mode=maildir -> write the message to <dir>/tmp, fsync the file, rename it into <dir>/new,
//                  fsync new/, then 250 (fs.promises: libuv's thread pool)
// With count_file set, SIGUSR2 writes "<seq> <messages queued>" to it (tmp + rename), so the
// benchmark can check how many messages were accepted.
'use strict'
const fs = require('node:fs')
const fsp = require('node:fs/promises')
const path = require('node:path')

let seq = 0
let queued = 0
let dumps = 0

exports.register = function () {
    this.cfg = this.config.get('bench_queue.ini', { booleans: ['+main.fsync'] })
    this.mode = this.cfg.main.mode || 'discard'
    this.dir = this.cfg.main.dir
    this.do_fsync = this.cfg.main.fsync
    if (this.mode === 'maildir') {
        for (const sub of ['tmp', 'new', 'cur']) fs.mkdirSync(path.join(this.dir, sub), { recursive: true })
    }
    const countFile = this.cfg.main.count_file
    if (countFile) {
        process.on('SIGUSR2', () => {
            fs.writeFileSync(countFile + '.tmp', `${++dumps} ${queued}\n`)
            fs.renameSync(countFile + '.tmp', countFile)
        })
    }
    this.register_hook('queue', 'bench_queue')
}

exports.bench_queue = function (next, connection) {
    const txn = connection.transaction
    if (this.mode !== 'maildir') {
        queued++
        return next(OK, 'discarded')
    }
    const name = `${Date.now()}.P${process.pid}Q${++seq}.bench`
    const tmp = path.join(this.dir, 'tmp', name)
    const dst = path.join(this.dir, 'new', name)
    const plugin = this
    txn.message_stream.get_data(async (buf) => {
        try {
            const fh = await fsp.open(tmp, 'wx', 0o600)
            try {
                await fh.writeFile(buf)
                if (plugin.do_fsync) await fh.sync()
            } finally {
                await fh.close()
            }
            await fsp.rename(tmp, dst)
            if (plugin.do_fsync) {
                const dh = await fsp.open(path.join(plugin.dir, 'new'), 'r')
                try { await dh.sync() } finally { await dh.close() }
            }
            queued++
            next(OK, `queued as ${name}`)
        } catch (err) {
            connection.logerror(plugin, `write failed: ${err}`)
            next(DENYSOFT, 'write failed')
        }
    })
}
