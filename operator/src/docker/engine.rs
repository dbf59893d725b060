//! The Docker Engine API calls berth makes, and nothing else: no decisions here.
//! Works with Engine 20.10 (API 1.41): the client negotiates the version down.

use std::collections::HashMap;

use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, EventMessage, NetworkConnectRequest,
    NetworkCreateRequest, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, ListNetworksOptions,
    ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions, StopContainerOptions,
};
use bollard::Docker;
use futures::{Stream, StreamExt};

use super::labels;

/// Why a call to the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker engine ({0}); is dockerd running and is DOCKER_HOST (or /var/run/docker.sock) usable by this user?")]
    Connect(String),
    #[error("Docker engine: {action}: {message}")]
    Call { action: String, message: String },
}

fn call(action: impl Into<String>) -> impl FnOnce(BollardError) -> EngineError {
    let action = action.into();
    move |e| EngineError::Call {
        action,
        message: e.to_string(),
    }
}

/// One container as listed.
#[derive(Clone, Debug)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub state: String,
    pub status: String,
    pub image: String,
    pub networks: Vec<String>,
    /// IPv4 address on each network, by network name.
    pub ips: HashMap<String, String>,
}

impl ContainerInfo {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// A network as listed.
#[derive(Clone, Debug)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
}

/// The engine, seen through the label of one berth instance.
#[derive(Clone)]
pub struct Engine {
    pub docker: Docker,
    pub instance: String,
}

impl Engine {
    /// Connects with the local defaults (`DOCKER_HOST` or the unix socket) and negotiates the
    /// API version (1.41 on Engine 20.10).
    pub async fn open(instance: &str) -> Result<Engine, EngineError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| EngineError::Connect(e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| EngineError::Connect(e.to_string()))?;
        Ok(Engine {
            docker,
            instance: instance.to_string(),
        })
    }

    fn instance_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![format!("{}={}", labels::INSTANCE, self.instance)],
        )])
    }

    /// Every container of this instance, running or not.
    pub async fn containers(&self) -> Result<Vec<ContainerInfo>, EngineError> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(self.instance_filter()),
                ..Default::default()
            }))
            .await
            .map_err(call("list containers"))?;
        Ok(list
            .into_iter()
            .map(|c| ContainerInfo {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .unwrap_or_default()
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                status: c.status.unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                ips: c
                    .network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref())
                    .map(|n| {
                        n.iter()
                            .filter_map(|(k, v)| {
                                let ip = v.ip_address.clone().filter(|ip| !ip.is_empty())?;
                                Some((k.clone(), ip))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                networks: c
                    .network_settings
                    .and_then(|n| n.networks)
                    .map(|n| n.into_keys().collect())
                    .unwrap_or_default(),
            })
            .collect())
    }

    /// Every network of this instance.
    pub async fn networks(&self) -> Result<Vec<NetworkInfo>, EngineError> {
        let list = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(self.instance_filter()),
            }))
            .await
            .map_err(call("list networks"))?;
        Ok(list
            .into_iter()
            .map(|n| NetworkInfo {
                id: n.id.unwrap_or_default(),
                name: n.name.unwrap_or_default(),
                labels: n.labels.unwrap_or_default(),
            })
            .collect())
    }

    /// Names of the volumes of this instance.
    pub async fn volumes(&self) -> Result<Vec<(String, HashMap<String, String>)>, EngineError> {
        let list = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(self.instance_filter()),
            }))
            .await
            .map_err(call("list volumes"))?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name, v.labels))
            .collect())
    }

    pub async fn create_network(
        &self,
        name: &str,
        internal: bool,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        self.docker
            .create_network(NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                internal: Some(internal),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(call(format!("create network {name}")))?;
        Ok(())
    }

    pub async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(call(format!("remove network {name}"))(e)),
        }
    }

    pub async fn create_volume(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_string()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(call(format!("create volume {name}")))?;
        Ok(())
    }

    pub async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        match self
            .docker
            .remove_volume(name, Some(RemoveVolumeOptions { force: false }))
            .await
        {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(call(format!("remove volume {name}"))(e)),
        }
    }

    /// Creates a container, connects it to its other networks, and starts it.
    pub async fn run_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
        more_networks: &[(String, Vec<String>)],
    ) -> Result<(), EngineError> {
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(call(format!("create container {name}")))?;
        for (net, aliases) in more_networks {
            self.connect(name, net, aliases).await?;
        }
        self.docker
            .start_container(name, None)
            .await
            .map_err(call(format!("start container {name}")))?;
        Ok(())
    }

    /// Attaches a container to a network under some aliases.
    pub async fn connect(
        &self,
        container: &str,
        network: &str,
        aliases: &[String],
    ) -> Result<(), EngineError> {
        self.docker
            .connect_network(
                network,
                NetworkConnectRequest {
                    container: container.to_string(),
                    endpoint_config: Some(EndpointSettings {
                        aliases: (!aliases.is_empty()).then(|| aliases.to_vec()),
                        ..Default::default()
                    }),
                },
            )
            .await
            .map_err(call(format!("connect {container} to {network}")))
    }

    pub async fn disconnect(&self, container: &str, network: &str) -> Result<(), EngineError> {
        self.docker
            .disconnect_network(
                network,
                bollard::models::NetworkDisconnectRequest {
                    container: container.to_string(),
                    force: Some(true),
                },
            )
            .await
            .map_err(call(format!("disconnect {container} from {network}")))
    }

    /// SIGTERM, up to `timeout` seconds to finish, then removal. A container already gone is
    /// fine.
    pub async fn stop_and_remove(&self, name: &str, timeout: i64) -> Result<(), EngineError> {
        let t = i32::try_from(timeout).unwrap_or(i32::MAX);
        match self
            .docker
            .stop_container(
                name,
                Some(StopContainerOptions {
                    t: Some(t),
                    signal: None,
                }),
            )
            .await
        {
            Ok(()) => {}
            Err(BollardError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => {}
            Err(e) => return Err(call(format!("stop container {name}"))(e)),
        }
        match self
            .docker
            .remove_container(
                name,
                // `v`: the container's anonymous volumes (an image's VOLUME without a named
                // mount, e.g. redis without storage); named volumes are never removed here.
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    link: false,
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(call(format!("remove container {name}"))(e)),
        }
    }

    /// Runs a command in a container; its exit code and output.
    pub async fn exec(&self, container: &str, cmd: &[&str]) -> Result<(i64, String), EngineError> {
        let exec = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(call(format!("exec in {container}")))?;
        let mut text = String::new();
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None::<StartExecOptions>)
            .await
            .map_err(call(format!("exec in {container}")))?
        {
            while let Some(Ok(chunk)) = output.next().await {
                text.push_str(&chunk.to_string());
            }
        }
        let inspect = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(call(format!("exec in {container}")))?;
        Ok((inspect.exit_code.unwrap_or(-1), text))
    }

    /// Container and network events (what can change what runs).
    pub fn events(&self) -> impl Stream<Item = Result<EventMessage, BollardError>> {
        self.docker.events(Some(EventsOptions {
            filters: Some(HashMap::from([(
                "type".to_string(),
                vec!["container".to_string(), "network".to_string()],
            )])),
            ..Default::default()
        }))
    }
}
