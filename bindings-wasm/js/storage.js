// Snapshot storage shared by the pages and the service worker: IndexedDB (readable from workers), mirrored in
// localStorage by pages (synchronous, so the last write on `pagehide` is never lost).

const DB = 'tidings';
const STORE = 'snapshots';
let dbPromise;

function db() {
  if (typeof indexedDB === 'undefined') return Promise.resolve(null);
  dbPromise ??= new Promise((resolve) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => resolve(null);
  });
  return dbPromise;
}

/** The stored snapshot JSON for `key`, or '' (IndexedDB). */
export async function idbGet(key) {
  const d = await db();
  if (!d) return '';
  return new Promise((resolve) => {
    const req = d.transaction(STORE, 'readonly').objectStore(STORE).get(key);
    req.onsuccess = () => resolve(typeof req.result === 'string' ? req.result : '');
    req.onerror = () => resolve('');
  });
}

/** Stores snapshot JSON under `key` (IndexedDB); resolves when committed. */
export async function idbPut(key, value) {
  const d = await db();
  if (!d) return;
  return new Promise((resolve) => {
    const tx = d.transaction(STORE, 'readwrite');
    tx.objectStore(STORE).put(value, key);
    tx.oncomplete = () => resolve();
    tx.onerror = () => resolve();
    tx.onabort = () => resolve();
  });
}

/**
 * Read-modify-write of `key` in one IndexedDB transaction: `update(stored)` gets what is stored ('' if nothing) and
 * returns what to store. Transactions on one store run one at a time, so a page and the service worker never
 * overwrite what the other wrote meanwhile (both merge with `mergeSnapshots`). Resolves when committed.
 */
export async function idbUpdate(key, update) {
  const d = await db();
  if (!d) return;
  return new Promise((resolve) => {
    const tx = d.transaction(STORE, 'readwrite');
    const store = tx.objectStore(STORE);
    const req = store.get(key);
    req.onsuccess = () => {
      let next;
      try {
        next = update(typeof req.result === 'string' ? req.result : '');
      } catch (e) {
        console.warn('tidings: not storing a snapshot that could not be merged', e);
        return; // the transaction commits with nothing changed
      }
      store.put(next, key);
    };
    tx.oncomplete = () => resolve();
    tx.onerror = () => resolve();
    tx.onabort = () => resolve();
  });
}

export function lsGet(key) {
  try {
    return globalThis.localStorage?.getItem(key) ?? '';
  } catch {
    return '';
  }
}

export function lsSet(key, value) {
  try {
    globalThis.localStorage?.setItem(key, value);
  } catch {
    // quota or privacy mode: IndexedDB still has it
  }
}
