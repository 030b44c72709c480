//! Configuration commands: orgs, projects, keys, models, limits and admin tokens. Each validates
//! everything first and then mutates, so nothing half-applies; each success appends an audit
//! record and bumps the config version.

use crate::command::Command;
use crate::doc::{ChangeKind, next_price_version};
use crate::outcome::Outcome;
use crate::state::{Ctx, State, Touched, redacted_json};
use tollgate_types::config::ConfigDoc;
use tollgate_types::config::{
    AdminTokenRecord, ApiKeyRecord, KeyStatus, ModelDef, Org, Project, validate_name,
};
use tollgate_types::error::{ApiError, ErrorCode};
use tollgate_types::limits::{Limit, LimitKey, Scope};

fn exists(what: &str) -> ApiError {
    ApiError::new(ErrorCode::AlreadyExists, format!("{what} already exists"))
}

fn missing(what: &str) -> ApiError {
    ApiError::not_found(format!("{what} does not exist"))
}

impl State {
    pub(crate) fn execute_config(
        &mut self,
        ctx: &Ctx<'_>,
        touched: &mut Touched,
    ) -> Result<Outcome, ApiError> {
        let (action, target, before, after) = match &ctx.req.command {
            Command::CreateOrg(org) => self.create_org(org)?,
            Command::UpdateOrg {
                id,
                name,
                status,
                tier,
            } => self.update_org(id, name.as_deref(), *status, *tier)?,
            Command::DeleteOrg { id } => self.delete_org(id)?,
            Command::CreateProject(p) => self.create_project(p)?,
            Command::DeleteProject { org, id } => self.delete_project(org, id)?,
            Command::CreateKey(k) => self.create_key(k)?,
            Command::RevokeKey { id } => self.revoke_key(id)?,
            Command::PutModel(m) => self.put_model(m)?,
            Command::DeleteModel { name } => self.delete_model(name)?,
            Command::PutLimit(l) => self.put_limit(l, touched)?,
            Command::DeleteLimit(k) => self.delete_limit(k)?,
            Command::CreateAdminToken(t) => self.create_token(t)?,
            Command::RevokeAdminToken { id } => self.revoke_token(id)?,
            Command::ApplyConfig(doc) => return self.apply_config(ctx, doc, touched),
            Command::Bootstrap { .. }
            | Command::Acquire { .. }
            | Command::RecordUsage { .. }
            | Command::Batch(_) => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "not a configuration command",
                ));
            }
        };
        self.audit_push(ctx.req, ctx.actor, action, &target, before, after);
        self.config_version += 1;
        let config_version = self.config_version;
        Ok(match &ctx.req.command {
            Command::CreateKey(k) => Outcome::Created {
                id: k.id.to_string(),
                config_version,
            },
            Command::CreateAdminToken(t) => Outcome::Created {
                id: t.id.to_string(),
                config_version,
            },
            _ => Outcome::Done { config_version },
        })
    }

    fn create_org(&mut self, org: &Org) -> Result<Mutation, ApiError> {
        validate_name("name", &org.name)?;
        if self.orgs.contains_key(&org.id) {
            return Err(exists(&format!("org {}", org.id)));
        }
        self.orgs.insert(org.id.clone(), org.clone());
        Ok((
            "org.create",
            format!("org/{}", org.id),
            None,
            Some(redacted_json(org)),
        ))
    }

    fn update_org(
        &mut self,
        id: &tollgate_types::OrgId,
        name: Option<&str>,
        status: Option<tollgate_types::config::OrgStatus>,
        tier: Option<u8>,
    ) -> Result<Mutation, ApiError> {
        if let Some(n) = name {
            validate_name("name", n)?;
        }
        let org = self
            .orgs
            .get_mut(id)
            .ok_or_else(|| missing(&format!("org {id}")))?;
        let before = redacted_json(org);
        if let Some(n) = name {
            n.clone_into(&mut org.name);
        }
        if let Some(s) = status {
            org.status = s;
        }
        if let Some(t) = tier {
            org.tier = t;
        }
        Ok((
            "org.update",
            format!("org/{id}"),
            Some(before),
            Some(redacted_json(org)),
        ))
    }

    fn delete_org(&mut self, id: &tollgate_types::OrgId) -> Result<Mutation, ApiError> {
        if self.projects.keys().any(|(o, _)| o == id) {
            return Err(ApiError::invalid(
                "id",
                format!("org {id} still has projects; delete them first"),
            ));
        }
        let org = self
            .orgs
            .remove(id)
            .ok_or_else(|| missing(&format!("org {id}")))?;
        self.limits.retain(|k, _| k.scope.org() != id);
        Ok((
            "org.delete",
            format!("org/{id}"),
            Some(redacted_json(&org)),
            None,
        ))
    }

    fn create_project(&mut self, p: &Project) -> Result<Mutation, ApiError> {
        validate_name("name", &p.name)?;
        if !self.orgs.contains_key(&p.org) {
            return Err(missing(&format!("org {}", p.org)).with_param("org"));
        }
        let key = (p.org.clone(), p.id.clone());
        if self.projects.contains_key(&key) {
            return Err(exists(&format!("project {}/{}", p.org, p.id)));
        }
        self.projects.insert(key, p.clone());
        Ok((
            "project.create",
            format!("project/{}/{}", p.org, p.id),
            None,
            Some(redacted_json(p)),
        ))
    }

    fn delete_project(
        &mut self,
        org: &tollgate_types::OrgId,
        id: &tollgate_types::ProjectId,
    ) -> Result<Mutation, ApiError> {
        let live_key = self
            .keys
            .values()
            .any(|k| &k.org == org && &k.project == id && k.status == KeyStatus::Active);
        if live_key {
            return Err(ApiError::invalid(
                "id",
                format!("project {org}/{id} still has active keys; revoke them first"),
            ));
        }
        let p = self
            .projects
            .remove(&(org.clone(), id.clone()))
            .ok_or_else(|| missing(&format!("project {org}/{id}")))?;
        self.limits.retain(|k, _| !matches!(&k.scope, Scope::Project { org: o, project } if o == org && project == id));
        Ok((
            "project.delete",
            format!("project/{org}/{id}"),
            Some(redacted_json(&p)),
            None,
        ))
    }

    fn create_key(&mut self, k: &ApiKeyRecord) -> Result<Mutation, ApiError> {
        validate_name("name", &k.name)?;
        if !self
            .projects
            .contains_key(&(k.org.clone(), k.project.clone()))
        {
            return Err(missing(&format!("project {}/{}", k.org, k.project)).with_param("project"));
        }
        if let Some(m) = k
            .allowed_models
            .iter()
            .find(|m| !self.models.contains_key(*m))
        {
            return Err(ApiError::new(
                ErrorCode::ModelNotFound,
                format!("model {m} does not exist"),
            )
            .with_param("allowed_models"));
        }
        if self.keys.contains_key(&k.id) {
            return Err(exists(&format!("key {}", k.id)));
        }
        let mut k = k.clone();
        k.status = KeyStatus::Active;
        k.created_at_ms = self.clock_ms;
        let after = redacted_json(&k);
        self.keys.insert(k.id.clone(), k.clone());
        Ok(("key.create", format!("key/{}", k.id), None, Some(after)))
    }

    fn revoke_key(&mut self, id: &tollgate_types::KeyId) -> Result<Mutation, ApiError> {
        let k = self
            .keys
            .get_mut(id)
            .ok_or_else(|| missing(&format!("key {id}")))?;
        let before = redacted_json(k);
        k.status = KeyStatus::Revoked;
        Ok((
            "key.revoke",
            format!("key/{id}"),
            Some(before),
            Some(redacted_json(k)),
        ))
    }

    fn put_model(&mut self, m: &ModelDef) -> Result<Mutation, ApiError> {
        m.validate()?;
        let before = self.models.get(&m.name);
        let mut m = m.clone();
        m.price_version = next_price_version(before, &m);
        let before_json = before.map(redacted_json);
        let after = redacted_json(&m);
        self.models.insert(m.name.clone(), m.clone());
        Ok((
            "model.put",
            format!("model/{}", m.name),
            before_json,
            Some(after),
        ))
    }

    fn delete_model(&mut self, name: &tollgate_types::ModelName) -> Result<Mutation, ApiError> {
        let m = self
            .models
            .remove(name)
            .ok_or_else(|| missing(&format!("model {name}")))?;
        Ok((
            "model.delete",
            format!("model/{name}"),
            Some(redacted_json(&m)),
            None,
        ))
    }

    /// Checks that a limit's scope and model exist (in the state or in `doc`).
    pub(crate) fn check_limit_targets(&self, l: &Limit, doc: &ConfigDoc) -> Result<(), ApiError> {
        let org_ok = |o| self.orgs.contains_key(o) || doc.orgs.iter().any(|x| &x.id == o);
        match &l.scope {
            Scope::Org { org } if !org_ok(org) => {
                Err(missing(&format!("org {org}")).with_param("scope"))
            }
            Scope::Project { org, project } => {
                let known = self.projects.contains_key(&(org.clone(), project.clone()))
                    || doc
                        .projects
                        .iter()
                        .any(|p| &p.org == org && &p.id == project);
                if known {
                    Ok(())
                } else {
                    Err(missing(&format!("project {org}/{project}")).with_param("scope"))
                }
            }
            Scope::Key { org, key } => match self.keys.get(key) {
                Some(k) if &k.org == org => Ok(()),
                _ => Err(missing(&format!("key {key} in org {org}")).with_param("scope")),
            },
            _ => Ok(()),
        }?;
        match &l.model {
            Some(m) if !self.models.contains_key(m) && !doc.models.iter().any(|x| &x.name == m) => {
                Err(ApiError::new(
                    ErrorCode::ModelNotFound,
                    format!("model {m} does not exist"),
                )
                .with_param("model"))
            }
            _ => Ok(()),
        }
    }

    fn put_limit(&mut self, l: &Limit, touched: &mut Touched) -> Result<Mutation, ApiError> {
        l.validate()?;
        self.check_limit_targets(l, &ConfigDoc::default())?;
        let key = l.key();
        let before = self
            .limits
            .insert(key.clone(), l.clone())
            .map(|b| redacted_json(&b));
        self.retarget_buckets(l, touched);
        let target = format!("limit/{}", serde_json::to_string(&key).unwrap_or_default());
        Ok(("limit.put", target, before, Some(redacted_json(l))))
    }

    /// Moves live buckets of a limit to its new value. A lower limit never makes what was
    /// already committed a QL-1 violation: the bucket keeps `max(new, committed - debt)` as its
    /// checked limit, and grants use the configured value.
    fn retarget_buckets(&mut self, l: &Limit, touched: &mut Touched) {
        let key = l.key();
        let limit = crate::lease::bucket_limit(l);
        for (id, b) in self
            .buckets
            .range_mut((key.clone(), 0)..=(key.clone(), u64::MAX))
        {
            let committed = b.settled.saturating_add(b.held).saturating_sub(b.debt);
            b.limit = limit.max(committed);
            // a rate bucket never holds more tokens than its (new) depth
            b.level = b.level.min(u128::from(limit) * crate::lease::RATE_SCALE);
            touched.buckets.push(id.clone());
        }
    }

    fn delete_limit(&mut self, k: &LimitKey) -> Result<Mutation, ApiError> {
        let l = self.limits.remove(k).ok_or_else(|| missing("that limit"))?;
        let target = format!("limit/{}", serde_json::to_string(k).unwrap_or_default());
        Ok(("limit.delete", target, Some(redacted_json(&l)), None))
    }

    fn create_token(&mut self, t: &AdminTokenRecord) -> Result<Mutation, ApiError> {
        validate_name("name", &t.name)?;
        if self.tokens.contains_key(&t.id) {
            return Err(exists(&format!("admin token {}", t.id)));
        }
        let mut t = t.clone();
        t.revoked = false;
        t.created_at_ms = self.clock_ms;
        let after = redacted_json(&t);
        self.tokens.insert(t.id.clone(), t.clone());
        Ok(("token.create", format!("token/{}", t.id), None, Some(after)))
    }

    fn revoke_token(&mut self, id: &tollgate_types::KeyId) -> Result<Mutation, ApiError> {
        let t = self
            .tokens
            .get_mut(id)
            .ok_or_else(|| missing(&format!("admin token {id}")))?;
        let before = redacted_json(t);
        t.revoked = true;
        Ok((
            "token.revoke",
            format!("token/{id}"),
            Some(before),
            Some(redacted_json(t)),
        ))
    }

    fn apply_config(
        &mut self,
        ctx: &Ctx<'_>,
        doc: &ConfigDoc,
        touched: &mut Touched,
    ) -> Result<Outcome, ApiError> {
        let changes = self.diff_config(doc)?;
        let mut changed = 0u32;
        for c in changes.iter().filter(|c| c.kind != ChangeKind::Unchanged) {
            self.audit_push(
                ctx.req,
                ctx.actor,
                "config.apply",
                &c.target,
                c.before.clone(),
                Some(c.after.clone()),
            );
            changed += 1;
        }
        for o in &doc.orgs {
            self.orgs.insert(o.id.clone(), o.clone());
        }
        for p in &doc.projects {
            self.projects
                .insert((p.org.clone(), p.id.clone()), p.clone());
        }
        for m in &doc.models {
            let mut m = m.clone();
            m.price_version = next_price_version(self.models.get(&m.name), &m);
            self.models.insert(m.name.clone(), m);
        }
        for l in &doc.limits {
            self.limits.insert(l.key(), l.clone());
            self.retarget_buckets(l, touched);
        }
        if changed > 0 {
            self.config_version += 1;
        }
        Ok(Outcome::Applied {
            config_version: self.config_version,
            changed,
        })
    }
}

/// (action, target, before, after) of one mutation, for the audit log.
type Mutation = (&'static str, String, Option<String>, Option<String>);
