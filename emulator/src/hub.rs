//! Hubs and their membership: which connections exist, which user holds them, and which
//! groups they are in. Every send and every membership change goes through here.
//!
//! A send takes the hub's read lock just long enough to pick its targets, then delivers
//! outside the lock, so one slow delivery never blocks membership changes or other sends.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::connection::{
    CloseReason, Connection, Delivery, CLOSE_NORMAL, CLOSE_TOO_SLOW, CLOSE_UNRECOVERABLE,
};
use crate::filter::{Filter, Subject};
use crate::message::Envelope;
use crate::permission::{Grant, Permission, Permissions};

/// All hubs of one emulator, created on first use. Hub names are case-insensitive.
#[derive(Debug, Default)]
pub struct Hubs {
    hubs: RwLock<HashMap<String, Arc<Hub>>>,
}

impl Hubs {
    /// The hub called `name`, created if it is new.
    pub fn get_or_create(&self, name: &str) -> Arc<Hub> {
        let key = name.to_ascii_lowercase();
        if let Some(hub) = self.find(&key) {
            return hub;
        }
        let mut hubs = self.hubs.write().unwrap_or_else(|p| p.into_inner());
        hubs.entry(key.clone())
            .or_insert_with(|| Arc::new(Hub::new(key)))
            .clone()
    }

    pub fn find(&self, name: &str) -> Option<Arc<Hub>> {
        let hubs = self.hubs.read().unwrap_or_else(|p| p.into_inner());
        hubs.get(&name.to_ascii_lowercase()).cloned()
    }

    /// Names of every hub seen so far, sorted.
    pub fn names(&self) -> Vec<String> {
        let hubs = self.hubs.read().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = hubs.keys().cloned().collect();
        names.sort();
        names
    }

    /// Every hub, for shutdown.
    pub fn all(&self) -> Vec<Arc<Hub>> {
        let hubs = self.hubs.read().unwrap_or_else(|p| p.into_inner());
        hubs.values().cloned().collect()
    }
}

/// What a send did, for the caller's log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    pub delivered: usize,
    pub disconnected: usize,
}

/// One connection's place in the hub.
#[derive(Debug)]
struct Member {
    connection: Arc<Connection>,
    groups: HashSet<String>,
    permissions: Permissions,
}

impl Subject for Member {
    fn user_id(&self) -> Option<&str> {
        self.connection.user_id.as_deref()
    }

    fn connection_id(&self) -> &str {
        &self.connection.id
    }

    fn in_group(&self, group: &str) -> bool {
        self.groups.contains(group)
    }

    fn group_count(&self) -> usize {
        self.groups.len()
    }
}

#[derive(Debug, Default)]
struct State {
    members: HashMap<String, Member>,
    users: HashMap<String, HashSet<String>>,
    /// Ordered so that listing a group's connections pages stably.
    groups: HashMap<String, BTreeSet<String>>,
    /// Groups a user was added to; connections the user opens later join them too.
    user_groups: HashMap<String, HashSet<String>>,
}

impl State {
    fn join(&mut self, connection_id: &str, group: &str) -> bool {
        let Some(member) = self.members.get_mut(connection_id) else {
            return false;
        };
        member.groups.insert(group.to_owned());
        self.groups
            .entry(group.to_owned())
            .or_default()
            .insert(connection_id.to_owned());
        true
    }

    fn leave(&mut self, connection_id: &str, group: &str) -> bool {
        let Some(member) = self.members.get_mut(connection_id) else {
            return false;
        };
        member.groups.remove(group);
        if let Some(ids) = self.groups.get_mut(group) {
            ids.remove(connection_id);
            if ids.is_empty() {
                self.groups.remove(group);
            }
        }
        true
    }

    fn leave_all(&mut self, connection_id: &str) {
        let groups: Vec<String> = self
            .members
            .get(connection_id)
            .map(|m| m.groups.iter().cloned().collect())
            .unwrap_or_default();
        for group in groups {
            self.leave(connection_id, &group);
        }
    }

    fn user_connections(&self, user: &str) -> Vec<String> {
        self.users
            .get(user)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// A hub: an isolated set of connections, users and groups.
#[derive(Debug)]
pub struct Hub {
    pub name: String,
    state: RwLock<State>,
}

/// Which connections a send or close reaches before `excluded` and `filter` apply.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    All,
    User(&'a str),
    Group(&'a str),
    Connection(&'a str),
}

impl Hub {
    fn new(name: String) -> Self {
        Hub {
            name,
            state: RwLock::new(State::default()),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection with its token's roles and initial groups. Groups its user
    /// was added to earlier are joined as well.
    pub fn add(&self, connection: Arc<Connection>, roles: Vec<String>, groups: &[String]) {
        let mut state = self.write();
        let id = connection.id.clone();
        if let Some(user) = &connection.user_id {
            state
                .users
                .entry(user.clone())
                .or_default()
                .insert(id.clone());
        }
        let user_groups: Vec<String> = connection
            .user_id
            .as_ref()
            .and_then(|u| state.user_groups.get(u))
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default();
        state.members.insert(
            id.clone(),
            Member {
                connection,
                groups: HashSet::new(),
                permissions: Permissions::new(roles),
            },
        );
        for group in groups.iter().chain(&user_groups) {
            state.join(&id, group);
        }
    }

    /// Removes a connection from every index. Returns it if it was here.
    pub fn remove(&self, connection_id: &str) -> Option<Arc<Connection>> {
        let mut state = self.write();
        state.leave_all(connection_id);
        let member = state.members.remove(connection_id)?;
        if let Some(user) = &member.connection.user_id {
            if let Some(ids) = state.users.get_mut(user) {
                ids.remove(connection_id);
                if ids.is_empty() {
                    state.users.remove(user);
                }
            }
        }
        Some(member.connection)
    }

    pub fn connection(&self, connection_id: &str) -> Option<Arc<Connection>> {
        self.read()
            .members
            .get(connection_id)
            .map(|m| m.connection.clone())
    }

    pub fn connection_count(&self) -> usize {
        self.read().members.len()
    }

    fn targets(
        &self,
        audience: Audience<'_>,
        excluded: &[String],
        filter: Option<&Filter>,
    ) -> Vec<Arc<Connection>> {
        let state = self.read();
        let pick = |id: &String| -> Option<Arc<Connection>> {
            let member = state.members.get(id)?;
            if excluded.iter().any(|e| e == id) || filter.is_some_and(|f| !f.matches(member)) {
                return None;
            }
            Some(member.connection.clone())
        };
        match audience {
            Audience::All => state.members.keys().filter_map(pick).collect(),
            Audience::User(user) => state
                .users
                .get(user)
                .into_iter()
                .flatten()
                .filter_map(pick)
                .collect(),
            Audience::Group(group) => state
                .groups
                .get(group)
                .into_iter()
                .flatten()
                .filter_map(pick)
                .collect(),
            Audience::Connection(id) => pick(&id.to_owned()).into_iter().collect(),
        }
    }

    /// Delivers `envelope` to every connection of `audience` that is not excluded and passes
    /// `filter`. Subscribers that have stalled are disconnected, not waited for.
    pub fn send(
        &self,
        audience: Audience<'_>,
        envelope: &Envelope,
        excluded: &[String],
        filter: Option<&Filter>,
    ) -> SendReport {
        let mut report = SendReport::default();
        for connection in self.targets(audience, excluded, filter) {
            match connection.deliver(envelope) {
                Delivery::Queued => report.delivered += 1,
                Delivery::Closed => {}
                Delivery::Stalled => {
                    report.disconnected += 1;
                    tracing::warn!(
                        hub = %self.name,
                        connection = %connection.id,
                        "closing a stalled subscriber: its outbound queue is full"
                    );
                    self.close_one(
                        &connection,
                        CLOSE_TOO_SLOW,
                        "subscriber too slow: outbound queue full",
                    );
                }
                Delivery::BufferFull => {
                    report.disconnected += 1;
                    tracing::warn!(
                        hub = %self.name,
                        connection = %connection.id,
                        "ending a reliable session: too many unacknowledged messages"
                    );
                    self.close_one(
                        &connection,
                        CLOSE_UNRECOVERABLE,
                        "too many unacknowledged messages; the session cannot be recovered",
                    );
                }
            }
        }
        report
    }

    fn close_one(&self, connection: &Connection, code: u16, reason: &str) {
        self.remove(&connection.id);
        connection.close(CloseReason {
            code,
            reason: reason.to_owned(),
        });
    }

    /// Closes the connections of `audience` except `excluded`. Returns how many closed.
    pub fn close(&self, audience: Audience<'_>, excluded: &[String], reason: &str) -> usize {
        let targets = self.targets(audience, excluded, None);
        for connection in &targets {
            self.close_one(connection, CLOSE_NORMAL, reason);
        }
        targets.len()
    }

    /// Closes every connection of `audience` with a given code.
    pub fn close_with(&self, audience: Audience<'_>, reason: CloseReason) {
        for connection in self.targets(audience, &[], None) {
            self.close_one(&connection, reason.code, &reason.reason);
        }
    }

    pub fn user_exists(&self, user: &str) -> bool {
        self.read().users.contains_key(user)
    }

    pub fn group_exists(&self, group: &str) -> bool {
        self.read().groups.contains_key(group)
    }

    pub fn connection_exists(&self, connection_id: &str) -> bool {
        self.read().members.contains_key(connection_id)
    }

    /// Adds a connection to a group. False when the connection does not exist.
    pub fn add_connection_to_group(&self, connection_id: &str, group: &str) -> bool {
        self.write().join(connection_id, group)
    }

    pub fn remove_connection_from_group(&self, connection_id: &str, group: &str) -> bool {
        self.write().leave(connection_id, group)
    }

    pub fn remove_connection_from_all_groups(&self, connection_id: &str) {
        self.write().leave_all(connection_id);
    }

    /// Adds the user's connections to a group, now and when the user connects again.
    pub fn add_user_to_group(&self, user: &str, group: &str) {
        let mut state = self.write();
        state
            .user_groups
            .entry(user.to_owned())
            .or_default()
            .insert(group.to_owned());
        for id in state.user_connections(user) {
            state.join(&id, group);
        }
    }

    pub fn remove_user_from_group(&self, user: &str, group: &str) {
        let mut state = self.write();
        if let Some(groups) = state.user_groups.get_mut(user) {
            groups.remove(group);
        }
        for id in state.user_connections(user) {
            state.leave(&id, group);
        }
    }

    pub fn remove_user_from_all_groups(&self, user: &str) {
        let mut state = self.write();
        state.user_groups.remove(user);
        for id in state.user_connections(user) {
            state.leave_all(&id);
        }
    }

    /// Adds every connection that passes `filter` to each of `groups`.
    pub fn add_filtered_to_groups(&self, groups: &[String], filter: Option<&Filter>) {
        self.change_filtered(groups, filter, State::join);
    }

    /// Removes every connection that passes `filter` from each of `groups`.
    pub fn remove_filtered_from_groups(&self, groups: &[String], filter: Option<&Filter>) {
        self.change_filtered(groups, filter, State::leave);
    }

    fn change_filtered(
        &self,
        groups: &[String],
        filter: Option<&Filter>,
        change: fn(&mut State, &str, &str) -> bool,
    ) {
        let mut state = self.write();
        let ids: Vec<String> = state
            .members
            .iter()
            .filter(|(_, m)| filter.is_none_or(|f| f.matches(*m)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            for group in groups {
                change(&mut state, id, group);
            }
        }
    }

    /// One page of a group's connections, in connection id order, starting after `after`.
    /// Returns the page and whether more follow.
    pub fn group_connections(
        &self,
        group: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(String, Option<String>)>, bool) {
        let state = self.read();
        let Some(ids) = state.groups.get(group) else {
            return (Vec::new(), false);
        };
        let mut page = Vec::with_capacity(limit.min(ids.len()));
        let mut rest = ids
            .iter()
            .filter(|id| after.is_none_or(|after| id.as_str() > after));
        for id in rest.by_ref().take(limit) {
            let user = state
                .members
                .get(id)
                .and_then(|m| m.connection.user_id.clone());
            page.push((id.clone(), user));
        }
        let more = rest.next().is_some();
        (page, more)
    }

    /// Grants a permission to a connection. False when the connection does not exist.
    pub fn grant(&self, connection_id: &str, grant: Grant) -> bool {
        let mut state = self.write();
        let Some(member) = state.members.get_mut(connection_id) else {
            return false;
        };
        member.permissions.grant(grant);
        true
    }

    pub fn revoke(&self, connection_id: &str, permission: Permission, group: Option<&str>) {
        if let Some(member) = self.write().members.get_mut(connection_id) {
            member.permissions.revoke(permission, group);
        }
    }

    /// Whether a connection holds `permission` on `group`.
    pub fn allows(&self, connection_id: &str, permission: Permission, group: Option<&str>) -> bool {
        self.read()
            .members
            .get(connection_id)
            .is_some_and(|m| m.permissions.allows(permission, group))
    }
}
