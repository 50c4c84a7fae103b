// The demo's service worker (registered as a module worker): Web Push through the shared dedup state.
import { installTidingsPush } from './pkg/sw.js';

installTidingsPush({ name: 'tidings' });
self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));
